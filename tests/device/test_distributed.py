"""Data-parallel training on CPU: 2 gloo ranks on 127.0.0.1 against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import LIMIT, cli_env, gone, process_tree, wait_until
from resbench.data.batches import TrainBatches
from resbench.data.facts import PREPARED_FILES
from resbench.data.prepared import missing_prepared_files
from resbench.device import distributed
from resbench.models.resnet import resnet
from resbench.settings.config import TrainConfig
from resbench.train import loop as train_module
from resbench.train.lossscale import ConstantLossScale
from resbench.train.step import train_step

CFG = TrainConfig(optim_momentum=0.9, optim_weight_decay=0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toy_data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (64,), generator=generator)


def new_model_and_optimizer():
    torch.manual_seed(0)
    model = resnet(8).to(memory_format=torch.channels_last)  # as train() builds it
    with torch.no_grad():  # a non-trivial start: zero-init layers would hide errors in the gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)


def rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = distributed.init_world(torch.device("cpu"))
    ddp = train_three_steps(world, out)  # returns with DDP unreachable, but alive in its reference cycles
    destroy = distributed.dist.destroy_process_group

    def destroy_after_ddp(*args, **kwargs):  # DDP freed at exit instead aborted a rank now and then
        assert ddp() is None, "DDP (and the gloo group it holds) still alive when the group is destroyed"
        destroy(*args, **kwargs)

    distributed.dist.destroy_process_group = destroy_after_ddp  # in this spawned process only
    distributed.shutdown(world)


def train_three_steps(world: distributed.World, out: str) -> weakref.ref:
    model, optimizer = new_model_and_optimizer()
    ddp = distributed.wrap(model, torch.device("cpu"), world, sync_bn=False)
    batches = TrainBatches(*toy_data(), batch_size=32, seed=7, rank=world.rank, world_size=2)
    scaler = ConstantLossScale("cpu", enabled=False)
    for step in range(3):
        train_step(ddp, optimizer, scaler, *batches.batch(step), 0.1, CFG, torch.autocast("cpu", enabled=False))
    running_means = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    distributed.average_bn_statistics(model, world)
    torch.save({"params": [p.detach() for p in model.parameters()], "running_means": running_means,
                "averaged": [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]},
               f"{out}/rank{world.rank}.pt")
    return weakref.ref(ddp)


def preparing_worker(rank: int, port: int, data_root: str) -> None:
    """Both ranks need a missing dataset: rank 0 'downloads' it (slowly), rank 1 must wait for it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = distributed.init_world(torch.device("cpu"))
    calls = []

    def slow_prepare(name, root, mirror=None):
        calls.append(name)
        time.sleep(2)
        folder = Path(root) / name
        folder.mkdir(parents=True)
        for file in PREPARED_FILES:
            (folder / file).write_text("")

    train_module.prepare_dataset = slow_prepare
    train_module.ensure_prepared(TrainConfig(data_name="CIFAR10_x32", data_root=data_root), world, torch.device("cpu"))
    assert calls == (["CIFAR10_x32"] if rank == 0 else []), calls
    assert not missing_prepared_files("CIFAR10_x32", data_root), f"rank {rank} went on before the data was there"
    distributed.shutdown(world)


def test_other_ranks_wait_while_rank0_prepares_the_data(tmp_path):
    mp.spawn(preparing_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # One process, the same global batches, BatchNorm statistics per half as on the two ranks.
    model, optimizer = new_model_and_optimizer()
    batches = TrainBatches(*toy_data(), batch_size=32, seed=7)
    for step in range(3):
        images, labels = batches.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = 0.1
        optimizer.zero_grad()
        halves = [torch.nn.functional.cross_entropy(model(images[s]), labels[s]) for s in (slice(0, 16), slice(16, 32))]
        (sum(halves) / 2).backward()
        optimizer.step()

    for p, p0, p1 in zip(model.parameters(), ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p0, p1)  # the ranks stay in lock step
        # Equal up to the order of floating-point sums (all-reduce vs one backward pass).
        torch.testing.assert_close(p.detach(), p0, rtol=1e-3, atol=2e-5)
    for m0, m1, avg in zip(ranks[0]["running_means"], ranks[1]["running_means"], ranks[0]["averaged"]):
        torch.testing.assert_close(avg, (m0 + m1) / 2)
    assert not all(torch.equal(m0, m1) for m0, m1 in zip(ranks[0]["running_means"], ranks[1]["running_means"]))


def torchrun(save, *extra):
    """A 2-rank run of 160 iterations: a signal sent once the checkpoint of iteration 80 is there stops it at
    the ranks' next logging point (100 or 150), between evaluations and before the end."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "resbench", "train", "--data_name", "Digits_x32", "--resnet_depth", "8",
               "--batch_size", "32", "--optim_ni", "160", "--eval_every", "80", "--device", "cpu",
               "--save", str(save), *extra]
    env = cli_env() | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.fixture(scope="module")
def whole_two_rank_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run: what every interrupted one must end as."""
    folder = tmp_path_factory.mktemp("whole")
    whole = torchrun(folder)
    output = whole.communicate(timeout=LIMIT)[0]
    assert whole.returncode == 0, output
    assert output.count("finished: best val/acc") == 1  # only rank 0 reports and writes
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 160
    return folder


def resume_and_compare(folder: Path, whole: Path) -> None:
    assert not (folder / "summary.json").exists()
    resumed = torchrun(folder)
    output = resumed.communicate(timeout=LIMIT)[0]
    assert resumed.returncode == 0, output
    assert "resuming at iteration" in output
    again, summary = (json.loads((f / "summary.json").read_text()) for f in (folder, whole))
    for key in ("best_val_acc", "tst_acc", "tst_nll", "best_iter"):
        assert again[key] == summary[key], key
    a = torch.load(whole / "last.pt", weights_only=True)["model"]
    b = torch.load(folder / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen) -> None:
    wait_until(lambda: (folder / "last.pt").exists(), proc)


def test_two_rank_run_writes_one_folder_and_resumes_after_a_kill(tmp_path, whole_two_rank_run):
    killed = torchrun(tmp_path / "killed")
    wait_for_checkpoint(tmp_path / "killed", killed)
    tree = process_tree(killed.pid)  # torchrun starts each rank in a session of its own: signal each process
    assert len(tree) >= 3, tree  # torchrun and its two ranks
    for pid in tree:  # as a crashed machine: every process at once
        os.kill(pid, signal.SIGKILL)
    killed.wait()
    wait_until(lambda: all(gone(pid) for pid in tree))
    resume_and_compare(tmp_path / "killed", whole_two_rank_run)


def test_two_rank_run_stopped_between_evaluations_resumes_exactly(tmp_path, whole_two_rank_run):
    """SIGTERM after the first evaluation: the ranks stop together at a logging point, where their
    BatchNorm statistics differ; each must resume with its own (last.pt keeps them all)."""
    stopped = torchrun(tmp_path / "stopped")
    wait_for_checkpoint(tmp_path / "stopped", stopped)
    os.killpg(stopped.pid, signal.SIGTERM)  # as a scheduler does: torchrun and both ranks
    output = stopped.communicate(timeout=LIMIT)[0]
    assert "run the same command again to resume" in output, output
    saved = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert saved["state"]["step"] % 80, "stopped between evaluations"
    rank0, rank1 = saved["rank_buffers"]
    assert not all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks' statistics differ here"
    resume_and_compare(tmp_path / "stopped", whole_two_rank_run)


def test_batch_must_split_evenly(monkeypatch):
    from resbench.settings.config import ConfigError
    from resbench.train.checks import validate_config

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        validate_config(TrainConfig(batch_size=256))
