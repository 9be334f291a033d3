import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import LIMIT, REPO, cli_env, wait_until
from resbench.cli.main import main
from resbench.data import facts
from resbench.data.facts import read_facts
from resbench.device import bnstats, memory
from resbench.device.distributed import World
from resbench.models.resnet import count_parameters, resnet
from resbench.runs import checkpoint
from resbench.settings.config import ConfigError, TrainConfig, default_run_name, learning_rate
from resbench.train import meter
from resbench.train import step as step_module
from resbench.train.checks import validate_config
from resbench.train.loop import Interrupted, train
from resbench.train.lossscale import ConstantLossScale
from resbench.train.step import train_step


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(optim_ni=48_000, optim_lr=0.1)
    assert learning_rate(0, cfg) == 0.0
    assert learning_rate(2_400, cfg) == pytest.approx(0.05)
    assert learning_rate(4_800, cfg) == pytest.approx(0.1)  # the end of warm-up: the peak
    assert learning_rate(4_800 + 21_600, cfg) == pytest.approx(0.05)  # half way through the cosine
    assert learning_rate(47_999, cfg) == pytest.approx(0.0, abs=1e-8)
    assert learning_rate(48_000, cfg) == 0.0
    lrs = [learning_rate(s, cfg) for s in range(0, 48_000, 100)]
    peak = lrs.index(max(lrs))
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def test_schedule_floors_the_warmup_length():
    cfg = TrainConfig(optim_ni=15, optim_lr=1.0)  # warm-up floor(1.5) = 1 step, cosine floor(13.5) = 13
    assert learning_rate(0, cfg) == 0.0
    assert learning_rate(1, cfg) == 1.0
    assert learning_rate(14, cfg) == pytest.approx(0.0, abs=1e-12)


def sgd_reference_step(params, grads, bufs, lr, momentum, wd):
    """The recipe's update, written out: g += wd·p; buf = g + m·buf; p -= lr·buf."""
    for p, g, b in zip(params, grads, bufs):
        g = g + wd * p
        b.mul_(momentum).add_(g)
        p.sub_(lr * b)


def test_weight_decay_and_momentum_on_every_parameter():
    torch.manual_seed(0)
    model = resnet(8, num_classes=3)
    with torch.no_grad():  # make every parameter non-zero so decay shows everywhere
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cfg = TrainConfig(optim_weight_decay=0.01, optim_momentum=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)
    scaler = ConstantLossScale("cpu", enabled=False)
    expected = [p.detach().clone() for p in model.parameters()]
    bufs = [torch.zeros_like(p) for p in expected]
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for lr in (0.05, 0.1):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        sgd_reference_step(expected, grads, bufs, lr, 0.9, 0.01)
        train_step(model, optimizer, scaler, x, y, lr, cfg, torch.autocast("cpu", enabled=False))
    for name_p, e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(name_p[1].detach(), e, rtol=1e-5, atol=1e-6, msg=name_p[0])
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["weight_decay"] == 0.01  # one group: BN, convs and classifier alike


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_gradient_clipping_clips_the_decayed_gradient_as_the_reference(fused):
    """The reference adds wd·p first and clips the global norm of g + wd·p; then momentum as usual."""
    torch.manual_seed(0)
    model = resnet(8, num_classes=3)
    with torch.no_grad():  # non-zero parameters everywhere, so that wd·p counts
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    clip, wd, lr = 0.05, 0.1, 0.5
    cfg = TrainConfig(optim_global_clipping=clip, optim_weight_decay=wd, optim_momentum=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=wd, fused=fused)
    expected = [p.detach().clone() for p in model.parameters()]
    bufs = [torch.zeros_like(p) for p in expected]
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 3, (8,))
    norms = []
    for _ in range(2):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        decayed = [p.grad + wd * p.detach() for p in model.parameters()]
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in decayed)).item()
        norms.append(norm)
        for p, d, b in zip(expected, decayed, bufs):
            b.mul_(0.9).add_(d * min(1.0, clip / norm))
            p.sub_(lr * b)
        _, gnorm, _ = train_step(model, optimizer, ConstantLossScale("cpu", enabled=False), x, y, lr, cfg,
                              torch.autocast("cpu", enabled=False), measure_grad_norm=True)
        assert gnorm == pytest.approx(norm, rel=1e-5)  # the norm of g + wd·p, before clipping
        for (name, p), e in zip(model.named_parameters(), expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6, msg=name)
    assert all(norm > 2 * clip for norm in norms)  # the clipping was active in both steps


@pytest.mark.parametrize("change, message", [
    (dict(data_name="MNIST"), "unknown data_name 'MNIST'"),
    (dict(resnet_depth=21), "unsupported resnet depth 21"),
    (dict(resnet_width=0), "width must be a positive integer"),
    (dict(resnet_width=2000), "out of range: use 1 to 1024"),
    (dict(resnet_depth=600_002), "resnet depth 600002 is out of range: use 6n\\+2 up to 1202"),
    (dict(batch_size=0), "--batch_size must be a positive integer"),
    (dict(data_name="Digits_x32", batch_size=4096), "larger than the training split"),
    (dict(optim_ni=-5), "--optim_ni must be a positive integer"),
    (dict(mixed_precision="maybe"), "--mixed_precision must be"),
    (dict(mixed_precision="fp16", device="cpu"), "fp16 needs a CUDA device"),
    (dict(optim_ni=10**30), "--optim_ni must be at most 1,000,000,000 iterations"),
    (dict(threads=10**12), "--threads must be from 1 to 4096"),
    (dict(optim_global_clipping=float("inf")), "--optim_global_clipping must be a positive finite number"),
    (dict(data_root="data\0x"), "--data_root holds a NUL character"),
    (dict(bn_groups=0), "--bn_groups must be a positive integer"),
    (dict(bn_groups=3), "--bn_groups 3 does not split 256 images evenly; use a divisor of 256"),
    (dict(bn_groups=2, sync_bn=True), "--bn_groups .* and --sync_bn .* contradict each other"),
])
def test_bad_settings_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(TrainConfig(**change))


def test_default_run_name():
    assert default_run_name(TrainConfig()) == "R20x1-b256-i48k-lr0.1-wd0.001-s42"
    cfg = TrainConfig(resnet_depth=18, optim_ni=500, mixed_precision="bf16", device="cpu")
    assert default_run_name(cfg) == "R18x1-b256-i500-lr0.1-wd0.001-s42-bf16"
    assert default_run_name(TrainConfig(bn_groups=2)) == "R20x1-b256-i48k-lr0.1-wd0.001-s42-bng2"


SEED_COMMAND = ("--data_name CIFAR10_x32 --resnet_depth 20 --resnet_width 1 --batch_size 256 --optim_ni 48000 "
                "--optim_lr 0.1 --optim_momentum 0.9 --optim_weight_decay 0.0010").split()


def test_seed_command_verbatim_writes_a_complete_run_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "CIFAR10_x32"
    folder.mkdir(parents=True)
    for split, n in (("train", 50_000), ("test", 10_000)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 10, n))
    # The seed's command as printed, run from the checkout's root, with a short run appended.
    command = [sys.executable, "scripts_cifar/SGDM.py", *SEED_COMMAND, "--optim_ni=3",
               "--data_root", str(tmp_path / "data"), "--save", str(tmp_path / "run")]
    proc = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [  # the .lock is gone with the process that held it
        "best.pt", "best.pt.sha256", "config.json", "last.pt", "last.pt.sha256", "log.txt", "metrics.jsonl",
        "summary.json"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iterations"] == 3 and summary["params"] == 272_464
    assert summary["precision"] == "fp32" and summary["config"]["optim_weight_decay"] == 0.001
    official = {"train": 40_960, "val": 9_040, "test": 10_000}  # what table and compare check (issue 39)
    assert summary["splits"] == json.loads((run / "config.json").read_text())["resolved"]["splits"] == official
    for key in ("best_val_acc", "tst_acc", "tst_nll", "best_iter", "wall_seconds", "images_per_sec", "epochs_per_min",
                "device", "versions", "data_name", "depth", "width"):
        assert summary[key] is not None, key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [3]  # eval_every 1000 > 3: one evaluation, at the last iteration
    assert 0.0 <= summary["best_val_acc"] <= 1.0 and math.isfinite(summary["tst_nll"])
    state_dict = torch.load(run / "best.pt", weights_only=True)
    resnet(20).load_state_dict(state_dict)
    log = (run / "log.txt").read_text()
    assert "--optim_weight_decay 0.001" in log and "272,464" in log and "torch:" in log and "[iter      3]" in log


def test_digits_demo_learns(tmp_path, run_cli, cli):
    """A broken trainer (no augmentation sense, wrong schedule, wrong init) cannot reach 0.9 here."""
    proc = run_cli("train", "--data_name", "Digits_x32", "--resnet_depth", "14", "--batch_size", "64",
                   "--optim_ni", "500", "--eval_every", "100", "--save", tmp_path / "run", check=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tst_acc"] >= 0.9, proc.stdout
    assert summary["best_val_acc"] >= 0.9
    again = cli("train", "--data_name", "Digits_x32", "--resnet_depth", "14", "--batch_size", "64",
                "--optim_ni", "500", "--eval_every", "100", "--save", tmp_path / "run", check=True)
    assert "not retraining" in again.stderr


def test_evaluation_lines_keep_their_columns_when_validation_does_not_improve(tmp_path, monkeypatch):
    """The test columns are best.pt's on every line, labelled so, and the learning rate is the last step's,
    named as in metrics.jsonl (issue 39: they vanished where validation did not improve, and the lr was an
    unlabelled mean)."""
    from resbench.train import loop

    scored = iter([0.5, 0.4, 0.3, 0.35])  # validation, test; validation worse, test
    monkeypatch.setattr(loop, "evaluate", lambda *args: {"acc": next(scored), "nll": 1.0})
    train(TrainConfig(data_name="Digits_x32", resnet_depth=8, batch_size=16, optim_ni=4, eval_every=2, device="cpu",
                      save=str(tmp_path / "run")))
    lines = [line for line in (tmp_path / "run" / "log.txt").read_text().splitlines() if line.startswith("[iter ")]
    labels = [re.findall(r"(?:^|, )([a-z_]+/[a-z_0-9]+) ", line.partition("] ")[2]) for line in lines]
    assert labels[0] == labels[1] == ["trn/loss", "trn/lr_at_eval", "trn/w_norm", "trn/g_norm", "val/acc", "val/nll",
                                      "val/best_acc", "tst/acc", "tst/nll"]
    for line in lines:
        assert ", tst/acc 0.4000, tst/nll 1.0000 (best.pt, iteration 2), evaluation " in line
    assert "trn/lr_at_eval 0.0000, " in lines[1]  # the cosine's end, where the window mean is not 0


def test_tensorboard_scalars_follow_the_evaluations(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from resbench.train.loop import train

    train(TrainConfig(data_name="Digits_x32", resnet_depth=8, batch_size=32, optim_ni=20, eval_every=10,
                      save=str(tmp_path / "run"), tensorboard=True))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    val_acc = events.Scalars("val/acc")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in val_acc] == [r["iter"] for r in records] == [10, 20]
    assert [e.value for e in val_acc] == pytest.approx([r["val_acc"] for r in records])
    tags = set(events.Tags()["scalars"])  # grouped train/, val/, test/, named as in metrics.jsonl
    assert {"train/loss", "train/w_norm", "train/lr_at_eval", "val/best_acc", "test/acc_at_eval"} <= tags
    assert {tag.split("/")[0] for tag in tags} == {"train", "val", "test", "time"}


def test_tensorboard_without_the_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'resbench\[tensorboard\]'"):
        validate_config(TrainConfig(tensorboard=True))


# What a machine can train, and a command line that fails in one line (issue 14).

@pytest.mark.parametrize("depth, width, image_size", [(8, 3, 32), (14, 2, 64), (18, 1, 32), (50, 2, 32)])
def test_the_memory_need_follows_the_built_network(depth, width, image_size):
    params, outputs = memory.network_size(depth, width, 10, image_size)
    model = resnet(depth, width, 10, image_size)
    assert params == count_parameters(model)
    counted = []
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, o: counted.append(o.numel()))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    assert outputs == sum(counted)


def test_what_fits_is_decided_per_depth_against_the_device(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * 2**30, "this machine has available"))
    validate_config(TrainConfig(resnet_depth=8, resnet_width=16, device="cpu"))  # needs 1.6 GiB: fits
    with pytest.raises(ConfigError, match=r"training --resnet_depth 152 --resnet_width 16 \([\d,]+ parameters, with "
                                          r"gradients, momentum and the activations of 256 images per process\) needs "
                                          r"at least [\d.]+ GiB, more than the 8.0 GiB this machine has available; "
                                          r"use a smaller --resnet_width, --resnet_depth or --batch_size"):
        validate_config(TrainConfig(resnet_depth=152, resnet_width=16, device="cpu"))
    validate_config(TrainConfig(resnet_depth=152, resnet_width=1, batch_size=16, device="cpu"))


def test_a_model_too_big_for_any_machine_is_one_line_at_once(capsys):
    assert main(["train", "--resnet_depth", "152", "--resnet_width", "64", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    params, _ = memory.network_size(152, 64, 10, 32)  # 1.2e11 since Bottlenecks widen their inner convolutions only
    assert f"({params:,} parameters" in err and re.search(r"needs at least 1\d{3}\.\d GiB, more than", err), err


def test_an_absurd_depth_in_a_run_folder_is_refused_by_eval(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"data_name": "Digits_x32", "resnet_depth": 600_002,
                                                      "resnet_width": 1}))
    (tmp_path / "best.pt").write_bytes(b"")
    assert main(["eval", "--ckpt", str(tmp_path / "best.pt"), "--device", "cpu"]) == 2
    assert "resnet depth 600002 is out of range" in capsys.readouterr().err


def test_an_argparse_error_is_one_line_and_a_pointer_to_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resnet_depth", "abc"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: argument --resnet_depth: invalid int value: 'abc' "
                                       "(see `resbench train --help`)\n")


INTERRUPTED_IMPORT = '''
import importlib.abc, pathlib, sys, time

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            pathlib.Path({marker!r}).touch()
            time.sleep({limit})
        return None

sys.meta_path.insert(0, Block())
'''


@pytest.mark.parametrize("entry", ["python -m", "console script", "seed script"])
def test_ctrl_c_while_importing_is_one_line(tmp_path, entry):
    """The import of torch is held (a sitecustomize that waits) until SIGINT arrives."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    marker = tmp_path / "importing"
    (hooks / "sitecustomize.py").write_text(INTERRUPTED_IMPORT.format(marker=str(marker), limit=LIMIT))
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])
    start = {"python -m": [sys.executable, "-m", "resbench"],
             "console script": [sys.executable, "-c", "import sys; from resbench.__main__ import run; sys.exit(run())"],
             "seed script": [sys.executable, str(REPO / "scripts_cifar" / "SGDM.py")]}[entry]
    # The seed script is `resbench train`: a run that imports torch once its flags are read.
    args = ["--data_root", str(tmp_path / "data"), "--save", str(tmp_path / "run")] if entry == "seed script" \
        else ["data", "list"]
    proc = subprocess.Popen([*start, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until(marker.exists, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130 and err == "interrupted\n", err


CLOSED_STREAMS = """
import os, sys
os.close(0); os.close(1)
script = os.open(sys.argv[1], os.O_RDONLY)
os.dup2(script, 2)  # stderr left on a file open for reading, as pyenv's shim does
os.close(script)
from resbench.__main__ import open_closed_standard_streams
open_closed_standard_streams()
print("to stderr", file=sys.stderr, flush=True); print("to stdout", flush=True)
opened = os.open(sys.argv[1], os.O_RDONLY)
assert opened > 2, opened
assert all(os.path.samestat(os.fstat(fd), os.stat(os.devnull)) for fd in (0, 1, 2))
"""


def test_closed_standard_streams_become_dev_null(tmp_path):
    """`resbench train ... <&- >&- 2>&-`: a print must not fail with EBADF mid-run, and no file the run
    opens may take descriptor 0, 1 or 2 (where a library's message would land in it)."""
    script = tmp_path / "script"
    script.write_text("")
    proc = subprocess.run([sys.executable, "-c", CLOSED_STREAMS, str(script)], env=cli_env(), timeout=LIMIT)
    assert proc.returncode == 0 and script.read_text() == ""


def test_a_deleted_current_folder_is_one_line_before_torch_is_imported(tmp_path):
    """`cd dir; rmdir ../dir; resbench train ...` ended in oneMKL's "Cannot load libtorch_cpu.so"."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
            "from resbench.__main__ import run; sys.exit(run(['train']))")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=LIMIT)
    assert (proc.returncode, proc.stderr) == (2, "error: the current folder cannot be used (No such file or "
                                                 "directory: deleted?); cd into an existing folder and run the "
                                                 "command again\n")


def test_the_console_script_is_the_light_entry_point():
    assert 'resbench = "resbench.__main__:run"' in (REPO / "pyproject.toml").read_text()


class BiasedRunningVariance:
    """Hooks that keep, beside each BatchNorm, the reference's running variance: an average (momentum
    0.1, from 1) of the biased batch variances, and PyTorch's (the unbiased ones), for every step."""

    def __init__(self, model: torch.nn.Module):
        self.biased: dict[str, torch.Tensor] = {}
        self.unbiased: dict[str, torch.Tensor] = {}
        self.steps: list[tuple[dict, dict]] = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.register_forward_pre_hook(lambda m, args, name=name: self.update(m, name, args[0]))

    def update(self, module: torch.nn.Module, name: str, x: torch.Tensor) -> None:
        if not module.training:
            return
        for store, unbiased in ((self.biased, False), (self.unbiased, True)):
            variance = x.detach().double().var(dim=(0, 2, 3), unbiased=unbiased)
            store[name] = 0.9 * store.get(name, torch.ones_like(variance)) + 0.1 * variance
        if name == "stem.0.1":  # the first BatchNorm: a new step begins
            self.steps.append(({}, {}))
        self.steps[-1][0][name], self.steps[-1][1][name] = self.biased[name], self.unbiased[name]


def test_reference_running_variance_averages_the_biased_batch_variances():
    """With 2 images per batch the last stage has N = 2·8·8 = 128 values per channel: PyTorch's running
    variance is up to 1/127 larger than the reference's."""
    torch.manual_seed(0)
    model = resnet(8)
    tracked = BiasedRunningVariance(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    counts = bnstats.values_per_channel(model, 32, 2, World(), sync_bn=False)
    assert counts["stem.0.1"] == 2 * 32 * 32 and counts["stages.2.0.conv2.1"] == 2 * 8 * 8
    for step in range(5):
        x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
        train_step(model, optimizer, ConstantLossScale("cpu", enabled=False), x, y, 0.1, TrainConfig(),
                   torch.autocast("cpu", enabled=False))
    bns = dict(bnstats.batchnorms(model))
    with bnstats.reference_running_variance(model, counts):
        for name, module in bns.items():
            torch.testing.assert_close(module.running_var.double(), tracked.biased[name], rtol=1e-6, atol=0)
    for name, module in bns.items():  # back in PyTorch's own form, and training goes on from it
        torch.testing.assert_close(module.running_var.double(), tracked.unbiased[name], rtol=1e-6, atol=0)
    for step in range(2):
        x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
        train_step(model, optimizer, ConstantLossScale("cpu", enabled=False), x, y, 0.1, TrainConfig(),
                   torch.autocast("cpu", enabled=False))
    with bnstats.reference_running_variance(model, counts):
        for name, module in bns.items():
            torch.testing.assert_close(module.running_var.double(), tracked.biased[name], rtol=1e-6, atol=0)


def test_values_per_channel_count_this_ranks_share_or_the_whole_batch():
    model = resnet(20)
    for world, sync_bn, images in ((World(0, 3), False, 85), (World(1, 3), False, 85), (World(2, 3), False, 86),
                                   (World(1, 3), True, 256)):
        counts = bnstats.values_per_channel(model, 32, 256, world, sync_bn)
        assert counts["stem.0.1"] == images * 32 * 32 and counts["stages.2.2.conv2.1"] == images * 8 * 8


def test_best_pt_holds_the_reference_running_variance_and_last_pt_pytorchs(tmp_path, monkeypatch):
    """One evaluation, at the last step: best.pt and last.pt hold the same model, with the running
    variances of the reference and of PyTorch. Their difference is compared, as PyTorch's own float32
    batch variance of Digits' stem is off by ~4e-6 (relative), more than the 6e-5 factor at stake there."""
    tracked: list[BiasedRunningVariance] = []
    real_resnet = step_module.resnet

    def tracked_resnet(*args, **kwargs):
        model = real_resnet(*args, **kwargs)
        tracked.append(BiasedRunningVariance(model))
        return model

    monkeypatch.setattr(step_module, "resnet", tracked_resnet)
    cfg = TrainConfig(data_name="Digits_x32", resnet_depth=8, batch_size=16, optim_ni=3, eval_every=3,
                      device="cpu", save=str(tmp_path / "run"))
    assert train(cfg)["best_iter"] == 3
    hooks = tracked[-1]  # the trained model; validate_config's memory estimate may build one first (cached)
    best = checkpoint.load_checkpoint(tmp_path / "run" / "best.pt")
    last = checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert len(hooks.steps) == 3
    for name, biased in hooks.biased.items():
        expected = hooks.unbiased[name] - biased  # up to ~1e-4 (stem, N = 16·32·32) or ~1e-3 (N = 16·8·8)
        assert expected.max() > 1e-5  # far above the tolerance below
        got = last[f"{name}.running_var"].double() - best[f"{name}.running_var"].double()
        torch.testing.assert_close(got, expected, rtol=0, atol=3e-7)


def test_the_run_accounts_for_its_time_warm_up_apart_in_every_session(tmp_path, monkeypatch):
    """summary.json's "time": the first WARMUP_STEPS steps of each session (where compilation happens;
    here a 1 s sleep stands for it) are booked apart from the steady steps, so steady_images_per_sec is
    the loop's speed while images_per_sec still divides by every training second; the evaluations'
    seconds are each record's eval_s, and nothing of the loop's wall clock is lost or counted twice."""
    real_step = step_module.Job.step

    def step(self, index, *args, **kwargs):
        if index in (0, 6):  # the first step of each session
            time.sleep(1.0)
        if index == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # stop after this step: the run saves and resumes at 6
        return real_step(self, index, *args, **kwargs)

    monkeypatch.setattr(step_module.Job, "step", step)
    cfg = TrainConfig(data_name="Digits_x32", resnet_depth=8, batch_size=16, optim_ni=12, eval_every=4,
                      device="cpu", compile="false", save=str(tmp_path / "run"))
    with pytest.raises(Interrupted):
        train(cfg)
    summary = train(cfg)
    spent = summary["time"]
    assert meter.WARMUP_STEPS == 3
    assert (spent["warmup_steps"], spent["steady_steps"], spent["evaluations"]) == (6, 6, 3)
    assert spent["warmup_s"] >= 2.0 and spent["steady_s"] < 1.0  # the sleeps are warm-up, never steady
    assert summary["steady_images_per_sec"] == pytest.approx(6 * 16 / spent["steady_s"])
    assert summary["images_per_sec"] == pytest.approx(12 * 16 / (spent["warmup_s"] + spent["steady_s"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["eval_s"] > 0 for r in records)
    assert spent["eval_s"] == pytest.approx(sum(r["eval_s"] for r in records))
    assert spent["checkpoint_s"] > 0 and spent["setup_s"] > 0
    assert 0 <= spent["other_s"] < 0.5  # progress and log lines only
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "= 6 warm-up iterations" in log and "6 steady iterations" in log and "3 evaluations" in log


def test_a_run_reads_an_imported_sets_facts_twice_however_many_evaluations_it_makes(tmp_path, cli, monkeypatch):
    """Once to check the settings before anything is written, once with the arrays (of the same import);
    the model, the data's placement, every evaluation and the summary use those facts, passed down (the
    checks, the size check, the loader and the summary each read dataset.json: four reads; issue 39)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", x_train=rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
             y_train=np.repeat(np.arange(3), 10))
    cli("data", "import", "Set", tmp_path / "set.npz", "--data_root", tmp_path / "data", "--workers", "1", check=True)
    reads = []
    monkeypatch.setattr(facts, "read_facts", lambda *args: reads.append(args) or read_facts(*args))
    cli("train", "--data_name", "Set", "--data_root", tmp_path / "data", "--resnet_depth", "8", "--batch_size", "8",
        "--optim_ni", "3", "--eval_every", "1", "--threads", "1", "--device", "cpu", "--save", tmp_path / "run",
        check=True)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3 and len(reads) == 2
