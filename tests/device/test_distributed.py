"""Data-parallel training on CPU: 2 gloo ranks on 127.0.0.1 against one process."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import LIMIT, cli_env, gone, process_tree, wait_until
from resbench.cli.main import main
from resbench.data.batches import TrainBatches
from resbench.data.facts import DATASETS, PREPARED_FILES
from resbench.data.prepared import missing_prepared_files
from resbench.device import bngroups, distributed
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


def new_model_and_optimizer(bn_groups: int = 1):
    """In float64, so that one process and two ranks differ only by the order of sums, far below any error."""
    torch.manual_seed(0)
    model = bngroups.group_batchnorms(resnet(8), bn_groups).double().to(memory_format=torch.channels_last)
    with torch.no_grad():  # a non-trivial start: zero-init layers would hide errors in the gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)


def batchnorms(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def momenta(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]


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
        images, labels = batches.batch(step)
        train_step(ddp, optimizer, scaler, images.double(), labels, 0.1, CFG, torch.autocast("cpu", enabled=False))
    running_means = [m.running_mean.clone() for m in batchnorms(model)]
    distributed.average_bn_statistics(model, world)
    torch.save({"params": [p.detach() for p in model.parameters()], "momenta": momenta(model, optimizer),
                "running_means": running_means, "averaged": [m.running_mean for m in batchnorms(model)],
                "averaged_vars": [m.running_var for m in batchnorms(model)]}, f"{out}/rank{world.rank}.pt")
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
    train_module.ensure_prepared(TrainConfig(data_name="CIFAR10_x32", data_root=data_root), DATASETS["CIFAR10_x32"],
                                 world, torch.device("cpu"))
    assert calls == (["CIFAR10_x32"] if rank == 0 else []), calls
    assert not missing_prepared_files("CIFAR10_x32", data_root), f"rank {rank} went on before the data was there"
    distributed.shutdown(world)


def test_other_ranks_wait_while_rank0_prepares_the_data(tmp_path):
    mp.spawn(preparing_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 gloo ranks holds after 3 steps (float64): weights, momenta, BatchNorm statistics."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_worker, args=(free_port(), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def assert_same_as_the_ranks(ranks: list[dict], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and momenta as the ranks', and the BatchNorm running statistics as the ranks' average (what
    both evaluate with), up to the order of float64 sums (all-reduce against one backward pass)."""
    close = {"rtol": 1e-9, "atol": 1e-12}
    for ours, theirs in ((list(model.parameters()), "params"), (momenta(model, optimizer), "momenta")):
        for mine, r0, r1 in zip(ours, ranks[0][theirs], ranks[1][theirs]):
            assert torch.equal(r0, r1)  # the ranks stay in lock step
            torch.testing.assert_close(mine.detach(), r0, **close)
    for bn, mean, var in zip(batchnorms(model), ranks[0]["averaged"], ranks[0]["averaged_vars"]):
        torch.testing.assert_close(bn.running_mean, mean, **close)
        torch.testing.assert_close(bn.running_var, var, **close)


def test_two_ranks_match_one_process_with_the_same_global_batch(two_ranks):
    # One process, the same global batches, BatchNorm statistics per half as on the two ranks.
    model, optimizer = new_model_and_optimizer()
    batches = TrainBatches(*toy_data(), batch_size=32, seed=7)
    for step in range(3):
        images, labels = batches.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = 0.1
        optimizer.zero_grad()
        halves = [torch.nn.functional.cross_entropy(model(images[s].double()).float(), labels[s])  # as train_step
                  for s in (slice(0, 16), slice(16, 32))]
        (sum(halves) / 2).backward()
        optimizer.step()

    for p, p0, p1 in zip(model.parameters(), two_ranks[0]["params"], two_ranks[1]["params"]):
        assert torch.equal(p0, p1)  # the ranks stay in lock step
        torch.testing.assert_close(p.detach(), p0, rtol=1e-9, atol=1e-12)  # up to the order of sums
    ranks = two_ranks
    for m0, m1, avg in zip(ranks[0]["running_means"], ranks[1]["running_means"], ranks[0]["averaged"]):
        torch.testing.assert_close(avg, (m0 + m1) / 2)
    assert not all(torch.equal(m0, m1) for m0, m1 in zip(ranks[0]["running_means"], ranks[1]["running_means"]))


def test_bn_groups_on_one_device_take_the_step_of_as_many_ranks(two_ranks):
    """`--bn_groups 2` on one process: the same weights, momenta and (averaged) running statistics as 2
    ranks, each normalising its half of the global batch (recipe.md's Multi-device)."""
    model, optimizer = new_model_and_optimizer(bn_groups=2)
    batches = TrainBatches(*toy_data(), batch_size=32, seed=7)
    scaler = ConstantLossScale("cpu", enabled=False)
    for step in range(3):
        images, labels = batches.batch(step)
        train_step(model, optimizer, scaler, images.double(), labels, 0.1, CFG, torch.autocast("cpu", enabled=False))
    assert_same_as_the_ranks(two_ranks, model, optimizer)
    assert all(m.num_batches_tracked == 3 for m in batchnorms(model))


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


# An ImageNet1k_x32-format set shrunk as tests/train/test_imagenet_run.py shrinks it: 1,000 classes, validation =
# test, and 48 training images, so that an epoch of batches of 32 ends in a batch padded with 16 zero images.
IMAGENET_SIZES = dict(num_train=48, num_val=16, num_test=16)

# What `-m resbench` is for the ranks, with the shrunk facts: torchrun's processes cannot see a monkeypatch.
SHRUNK_RESBENCH = f"""\
import dataclasses, sys
from resbench.data.facts import DATASETS
DATASETS["ImageNet1k_x32"] = dataclasses.replace(DATASETS["ImageNet1k_x32"], **{IMAGENET_SIZES!r})
from resbench.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def tiny_imagenet(data_root: Path) -> None:
    folder = data_root / "ImageNet1k_x32"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", IMAGENET_SIZES["num_train"]), ("test", IMAGENET_SIZES["num_test"])):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 1000, n))


def test_torchrun_on_two_cpu_processes_and_bn_groups_on_one_train_alike(tmp_path, cli, monkeypatch):
    """`torchrun --nproc_per_node 2 -m resbench train` (gloo) and `resbench train --bn_groups 2` in one process,
    on an ImageNet-format set through an epoch's padded last batch: the same evaluation and weights, up to
    float32 rounding (over many steps the runs part as any two roundings do, so three steps: a full batch,
    the padded one that ends the epoch, and the next epoch's first)."""
    monkeypatch.setitem(DATASETS, "ImageNet1k_x32", dataclasses.replace(DATASETS["ImageNet1k_x32"], **IMAGENET_SIZES))
    tiny_imagenet(tmp_path / "data")
    (tmp_path / "shrunk_resbench.py").write_text(SHRUNK_RESBENCH)
    settings = ["--data_name", "ImageNet1k_x32", "--data_root", str(tmp_path / "data"), "--resnet_depth", "8",
                "--batch_size", "32", "--optim_ni", "3", "--eval_every", "3", "--compile", "false", "--device", "cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(tmp_path / "shrunk_resbench.py"), "train", *settings, "--save", str(tmp_path / "ranks")]
    ranks = subprocess.run(command, env=cli_env() | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=LIMIT)
    assert ranks.returncode == 0, ranks.stdout
    cli("train", *settings, "--bn_groups", "2", "--threads", "1", "--save", tmp_path / "groups", check=True)

    (two,), (one,) = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                      for run in ("ranks", "groups"))
    assert two["epoch"] == one["epoch"] == 1.5  # 2 steps an epoch: the second step's batch was the padded one
    for key in ("trn_loss", "val_acc", "val_nll", "tst_acc_at_eval", "tst_nll_at_eval"):
        assert one[key] == pytest.approx(two[key], rel=1e-5), key
    (ranks_summary, groups_summary) = (json.loads((tmp_path / run / "summary.json").read_text())
                                       for run in ("ranks", "groups"))
    assert ranks_summary["world_size"] == 2 and groups_summary["world_size"] == 1
    assert ranks_summary["val_is_test"] and groups_summary["val_is_test"]
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("ranks", "groups"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)


def test_batch_must_split_evenly(monkeypatch):
    from resbench.settings.config import ConfigError
    from resbench.train.checks import validate_config

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        validate_config(TrainConfig(batch_size=256))


def test_a_bad_torchrun_variable_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    code = main(["train", "--data_name", "Digits_x32", "--device", "cpu", "--save", str(tmp_path / "run")])
    assert code == 2 and "environment variable WORLD_SIZE='abc' is not an integer" in capsys.readouterr().err
