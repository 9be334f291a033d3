"""fp16 loss scaling as the reference does it (train/lossscale.py): the constant scale 65,536, a step whose
gradient overflows skipped, counted and delaying the schedule, in the step, in a run and across its resumption."""

import contextlib
import json
import math
import os
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
from test_hotpath import assert_close_weights, batches, cuda

from conftest import tiny
from resbench.device import hotpath
from resbench.device.hotpath import autocast_for
from resbench.models.resnet import resnet
from resbench.runs import checkpoint
from resbench.runs.folder import RunFolder
from resbench.settings.config import TrainConfig
from resbench.train import lossscale
from resbench.train import step as step_module
from resbench.train.loop import Interrupted, train
from resbench.train.lossscale import REFERENCE_LOSS_SCALE, ConstantLossScale
from resbench.train.step import learning_rate, train_step


def steps_with_a_skip(device: torch.device, steps: int, skip: int | None,
                      fused: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor], ConstantLossScale, float]:
    """Weights, momentum buffers, the loss scale and the skipped count after `steps` mixed-precision
    steps on one batch, the gradient of step `skip` made infinite. Uninitialised memory is
    NaN-filled (deterministic mode), so an update that reads a buffer nobody wrote shows."""
    torch.manual_seed(0)
    model = hotpath.prepare_model(resnet(8), device)
    with mock.patch.object(hotpath, "fused_sgd_available", lambda device: fused):
        optimizer = hotpath.make_optimizer(model, 0.9, 1e-3, device)
    scaler = ConstantLossScale(device, enabled=True)
    x, y = batches(device, count=1)[0]
    autocast = torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for step in range(steps):
            hook = model.fc.weight.register_hook(lambda g: torch.full_like(g, float("inf"))) if step == skip else None
            train_step(model, optimizer, scaler, x, y, 0.1, TrainConfig(), autocast)
            if hook:
                hook.remove()
    finally:
        torch.use_deterministic_algorithms(False)
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    return [p.detach().clone() for p in model.parameters()], momentum, scaler, scaler.skipped_updates()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("skip", [0, 1], ids=["first_step", "later_step"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda])])
def test_loss_scale_skips_a_step_with_an_infinite_gradient_and_stays(device, skip, fused):
    """A skipped update changes nothing (weights and momentum), not even on the very first step, where
    fused SGD would otherwise keep uninitialised momentum buffers (see hotpath.make_optimizer); the
    scale stays 65,536, as the reference's does (torch.amp.GradScaler would halve it)."""
    device = torch.device(device)
    weights, momentum, scaler, skipped = steps_with_a_skip(device, 3, skip, fused)
    assert scaler.scale == REFERENCE_LOSS_SCALE == 65_536 and scaler.state_dict() == {"scale": 65_536.0}
    assert skipped == 1
    unskipped_weights, unskipped_momentum, _, none_skipped = steps_with_a_skip(device, 2, None, fused)
    assert none_skipped == 0
    assert_close_weights(weights, unskipped_weights, atol=1e-6)
    assert_close_weights(momentum, unskipped_momentum, atol=1e-6)


def test_loss_scale_never_grows():
    """torch.amp.GradScaler doubles its scale after 2,000 finite steps; the reference's stays."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=1e-3, momentum=0.9, fused=True)
    scaler = ConstantLossScale("cpu", enabled=True)
    for _ in range(2_001):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale_loss((param ** 2).sum()).backward()
        scaler.step(optimizer)
    assert scaler.scale == 65_536 and scaler.state_dict() == {"scale": 65_536.0}
    # The update used the unscaled gradient: 2,001 momentum steps of 2p at lr 1e-3 shrink p, not blow it up.
    assert 0 < param.detach().max().item() < 1


def test_loss_scaling_changes_no_finite_update():
    """With every gradient finite, scaled (and unscaled: clipped, norm measured) steps update exactly as
    unscaled ones: the scale is a power of two."""
    def weights(enabled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = hotpath.prepare_model(resnet(8), torch.device("cpu"))
        optimizer = hotpath.make_optimizer(model, 0.9, 1e-3, torch.device("cpu"))
        scaler = ConstantLossScale("cpu", enabled=enabled)
        for i, (x, y) in enumerate(batches(torch.device("cpu"))):
            cfg = TrainConfig(optim_global_clipping=0.5 if i == 1 else None)
            train_step(model, optimizer, scaler, x, y, 0.1, cfg, autocast_for("fp32", x.device), measure_grad_norm=i == 2)
        return [p.detach().clone() for p in model.parameters()]

    for scaled, plain in zip(weights(True), weights(False), strict=True):
        assert torch.equal(scaled, plain)


@contextlib.contextmanager
def overflowing_gradients(model: torch.nn.Module):
    """Make one gradient infinite, as an fp16 overflow does."""
    hook = next(model.parameters()).register_hook(lambda grad: torch.full_like(grad, math.inf))
    yield
    hook.remove()


def overflow_at(monkeypatch, iterations: tuple[int, ...], lrs: dict[int, float], stop_after: int | None = None):
    """fp16 loss scaling on CPU, the gradients of `iterations` made infinite; each iteration's learning rate
    recorded in `lrs`; a SIGTERM to this process after iteration `stop_after` (as a scheduler sends it)."""
    real_scale, real_step = lossscale.ConstantLossScale, step_module.Job.step
    monkeypatch.setattr(step_module, "ConstantLossScale", lambda device, enabled: real_scale(device, enabled=True))

    def step(job, iteration, *args, **kwargs):
        with overflowing_gradients(job.model) if iteration in iterations else contextlib.nullcontext():
            result = real_step(job, iteration, *args, **kwargs)
        lrs[iteration] = job.optimizer.param_groups[0]["lr"]
        if iteration == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(step_module.Job, "step", step)


def test_loss_scale_skips_are_counted_delay_the_schedule_and_survive_a_resume(tmp_path, monkeypatch):
    """fp16 needs CUDA, so on CPU: loss scaling switched on, and gradients that overflow at iterations 1 and 3.
    A skip is counted, not fatal, and, as in the reference, whose optimiser keeps its step count (the schedule's
    clock) at a skipped update, the step after it takes the skipped step's learning rate: the schedule lags, across
    a stop and resumption too (docs/reference/imagenet-x.md). The scale stays the reference's 65,536."""
    skipped, lrs = (1, 3), {}
    overflow_at(monkeypatch, skipped, lrs, stop_after=1)  # stopped right after the first skip, resumed
    cfg = tiny(tmp_path / "run")
    with pytest.raises(Interrupted, match="stopped by a signal at iteration 2"):
        train(cfg)
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["state"]["skipped_steps"] == 1
    overflow_at(monkeypatch, skipped, lrs)
    summary = train(cfg)
    expected = [learning_rate(t - sum(s < t for s in skipped), cfg) for t in range(6)]
    assert [lrs[t] for t in range(6)] == expected
    assert lrs[2] == lrs[1] and lrs[4] == lrs[3] and len(set(expected)) == 4  # the step after a skip
    run = RunFolder(cfg.save)
    records = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "finished" and summary["skipped_steps"] == 2
    assert [r["skipped_steps"] for r in records] == [1, 2]
    assert [r["loss_scale"] for r in records] == [65_536, 65_536]  # the reference's, never grown or halved
    log = run.file("log.txt").read_text()
    assert "trn/skipped_steps 2 (fp16 overflow)" in log and "fp16 loss scale 65,536, constant" in log
    assert log.count("loss scale 65,536") == 2 and log.count("trn/loss_scale 65,536") == 2  # each session, evaluation
    assert checkpoint.load_checkpoint(run.file("last.pt"))["scaler"] == {"scale": 65_536.0}


def test_logged_trn_lr_is_the_schedule_at_the_iteration_counter_as_the_reference_logs_it(tmp_path, monkeypatch):
    """The reference logs `scheduler(state.step)`, the train state's step, which a skipped update advances (only the
    optimiser's count, which the applied learning rate reads, stays): its ImageNet logs' trn/lr column is the window
    mean of the schedule at the iteration counter, unlagged, though ~100 steps of each run were skipped
    (imagenet-curves.tsv: e.g. 3.594e-01 at 12,000, where a lag of 8 would log 3.591e-01). metrics.jsonl's trn_lr is
    that mean too; trn_lr_at_eval is the learning rate the last step applied, lagged."""
    skipped, lrs = (1, 3), {}
    overflow_at(monkeypatch, skipped, lrs)
    cfg = tiny(tmp_path / "run")
    train(cfg)
    records = [json.loads(line) for line in RunFolder(cfg.save).file("metrics.jsonl").read_text().splitlines()]
    windows = [range(0, 3), range(3, 6)]
    assert [r["trn_lr"] for r in records] == pytest.approx(
        [sum(learning_rate(t, cfg) for t in window) / len(window) for window in windows], rel=1e-12)
    assert [r["trn_lr_at_eval"] for r in records] == [lrs[2], lrs[5]]
    assert lrs[5] == learning_rate(5 - len(skipped), cfg) != learning_rate(5, cfg)


def test_a_last_pt_with_the_former_dynamic_scaler_state_resumes(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    saved["scaler"] = {"scale": 131_072.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 17}  # what torch.amp.GradScaler.state_dict() held
    checkpoint.save_checkpoint(saved, last)
    assert train(unfinished_run)["status"] == "finished"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_train_step_counts_a_skipped_update(fused):
    torch.manual_seed(0)
    model = resnet(8, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)
    scaler = lossscale.ConstantLossScale("cpu", enabled=True)
    x, y, cfg = torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4,)), TrainConfig()
    no_autocast = torch.autocast("cpu", enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    with overflowing_gradients(model):
        train_step(model, optimizer, scaler, x, y, 0.1, cfg, no_autocast)
    assert scaler.skipped_updates() == 1 and all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    train_step(model, optimizer, scaler, x, y, 0.1, cfg, no_autocast)
    assert scaler.skipped_updates() == 1 and scaler.scale == 65_536
