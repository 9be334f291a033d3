"""A run of the recipe (train/loop.py, step.py, checks.py, summary.py): the schedule, the SGD update and its
clipping, settings refused, the seed's command, the log and TensorBoard, the run's time, divergence."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LIMIT, REPO, cli_env, tiny
from resbench.cli.main import main
from resbench.data import facts
from resbench.data.facts import read_facts
from resbench.models.resnet import resnet
from resbench.runs import checkpoint
from resbench.runs.folder import RunFolder
from resbench.settings.config import ConfigError, TrainConfig, default_run_name, learning_rate
from resbench.train import meter
from resbench.train import step as step_module
from resbench.train.checks import validate_config
from resbench.train.loop import Interrupted, TrainingDiverged, configure_determinism, train
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


def test_deterministic_mode_sets_every_switch(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    benchmark = torch.backends.cudnn.benchmark
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, benchmark


def model_of(path: Path) -> dict:
    saved = checkpoint.load_checkpoint(path)
    return saved.get("model", saved)


@pytest.mark.parametrize("poisoned_update, cause", [(5, "the training loss"), (6, "the weight norm")])
def test_divergence_stops_clearly_and_keeps_the_good_checkpoints(tmp_path, monkeypatch, capsys,
                                                                   poisoned_update, cause):
    """Update 5 makes the loss NaN from step 6 on; update 6 (just before the evaluation at 6) only the
    weights: either way the run stops, exit status 1, and last.pt/best.pt keep the finite state of 3."""
    real_step, updates = train_step, []

    def poisoning_step(model, *args, **kwargs):
        result = real_step(model, *args, **kwargs)
        updates.append(1)
        if len(updates) == poisoned_update:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(math.nan)
        return result

    monkeypatch.setattr(step_module, "train_step", poisoning_step)
    cfg = tiny(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=f"{cause} became nan by iteration 6"):
        train(cfg)
    run = RunFolder(cfg.save)
    assert checkpoint.load_checkpoint(run.file("last.pt"))["state"]["step"] == 3
    for name in ("last.pt", "best.pt"):
        assert all(t.isfinite().all() for t in model_of(run.file(name)).values()), name
    assert run.summary()["status"] == "diverged"

    (tmp_path / "run2").mkdir()
    updates.clear()
    code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "16",
                 "--optim_ni", "6", "--eval_every", "3", "--device", "cpu", "--save", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    # Progress lines may come first on stderr (it is not a terminal here); the error is the last line.
    assert code == 1 and err.splitlines()[-1].startswith(f"error: {cause} became nan") and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--data_name", "MNIST"], "unknown data_name 'MNIST': choose one of CIFAR10_x32"),
    (["--resnet_depth", "21"], "unsupported resnet depth 21: use"),
    (["--resnet_width", "0"], "width must be a positive integer"),
    (["--batch_size", "2000"], "larger than the training split"),
    (["--optim_ni", "0"], "--optim_ni must be a positive integer"),
    (["--save", "{tmp}/a-file"], "a file stands where a folder is needed"),
    (["--resume", "{tmp}"], "it is not a run folder (no config.json)"),
    (["--data_name", "CIFAR10_x32", "--data_root", "{tmp}/data"], "train_labels.npy has labels in [10, 10]"),
    (["--device", "mps"], "--device mps is not supported"),
    (["--seed", "99999999999999999999999"], "--seed must be an integer from 0 to 2**63 - 1"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    (tmp_path / "a-file").write_text("")
    mislabelled = tmp_path / "data" / "CIFAR10_x32"  # a prepared dataset whose labels are out of range
    mislabelled.mkdir(parents=True)
    for split in ("train", "test"):
        np.save(mislabelled / f"{split}_images.npy", np.zeros((5, 32, 32, 3), np.uint8))
        np.save(mislabelled / f"{split}_labels.npy", np.full(5, 10))
    base = ["--data_name", "Digits_x32", "--device", "cpu", "--save", str(tmp_path / "run")]
    code = main(["train", *base, *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_gpu_index_beyond_the_machine_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code = main(["train", "--data_name", "Digits_x32", "--device", "cuda:2", "--save", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --device cuda:2 does not exist: this machine has 2 CUDA GPU(s), cuda:0 to cuda:1\n"
