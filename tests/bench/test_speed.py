"""The fast hot path trains the same model as the plain one, and `resbench bench` reports sanely."""

import json
from unittest import mock

import pytest
import torch

from resbench.device import hotpath
from resbench.device.hotpath import autocast_for
from resbench.models.resnet import resnet
from resbench.settings.config import ConfigError, TrainConfig
from resbench.train.checks import validate_config
from resbench.train.lossscale import REFERENCE_LOSS_SCALE, ConstantLossScale
from resbench.train.step import train_step

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
STEPS = 3


def batches(device: torch.device, count: int = STEPS, batch_size: int = 16):
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(batch_size, 3, 32, 32, generator=gen).to(device),
             torch.randint(0, 10, (batch_size,), generator=gen).to(device)) for _ in range(count)]


def trained_weights(device: torch.device, channels_last: bool, fused: bool, compiled: bool,
                    precision: str = "fp32", depth: int = 8) -> list[torch.Tensor]:
    """Weights after STEPS training steps with the chosen hot-path options."""
    torch.manual_seed(0)
    model = resnet(depth)
    model = hotpath.prepare_model(model, device) if channels_last else model.to(device)
    kernel = {"fused": True} if fused else {"foreach": False}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-3, **kernel)
    scaler = ConstantLossScale(device, enabled=precision == "fp16")
    autocast = autocast_for(precision, device)
    step_model = hotpath.step_model_of(model, compiled, device)
    cfg = TrainConfig()
    for i, (x, y) in enumerate(batches(device)):
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        train_step(step_model, optimizer, scaler, x, y, 0.1 * (i + 1), cfg, autocast)
    return [p.detach().float().cpu() for p in model.parameters()]


def assert_close_weights(a: list[torch.Tensor], b: list[torch.Tensor], atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


def test_fused_sgd_matches_the_plain_update():
    cpu = torch.device("cpu")
    plain = trained_weights(cpu, channels_last=False, fused=False, compiled=False)
    assert_close_weights(trained_weights(cpu, channels_last=False, fused=True, compiled=False), plain, atol=1e-6)


def test_channels_last_matches_nchw():
    cpu = torch.device("cpu")
    plain = trained_weights(cpu, channels_last=False, fused=False, compiled=False)
    assert_close_weights(trained_weights(cpu, channels_last=True, fused=False, compiled=False), plain, atol=1e-5)


def test_compiled_step_matches_eager():
    """One compile of a depth-8 model: the slowest test here (tens of seconds on 2 cores)."""
    cpu = torch.device("cpu")
    eager = trained_weights(cpu, channels_last=True, fused=True, compiled=False)
    assert_close_weights(trained_weights(cpu, channels_last=True, fused=True, compiled=True), eager, atol=1e-5)


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


@pytest.mark.cuda
@cuda
def test_compiled_fp16_step_matches_eager_on_cuda():
    gpu = torch.device("cuda")
    eager = trained_weights(gpu, channels_last=True, fused=True, compiled=False, precision="fp16")
    compiled = trained_weights(gpu, channels_last=True, fused=True, compiled=True, precision="fp16")
    assert_close_weights(compiled, eager, atol=2e-3)


@pytest.mark.cuda
@cuda
def test_mixed_precision_training_on_cuda(cli, tmp_path):
    proc = cli("train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--optim_ni", "20",
               "--eval_every", "10", "--mixed_precision", "true", "--device", "cuda",
               "--save", tmp_path / "run", check=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["precision"] == "fp16", proc.stderr


def test_compile_choice_follows_the_run_length():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not hotpath.use_compile("auto", cpu, 50)
    assert hotpath.use_compile("auto", cpu, 48_000)
    assert not hotpath.use_compile("auto", gpu, 100)
    assert hotpath.use_compile("auto", gpu, 48_000)
    assert hotpath.use_compile("true", cpu, 1) and not hotpath.use_compile("false", cpu, 48_000)
    assert not hotpath.use_compile(False, cpu, 48_000)  # a config saved when compile was a bool
    with pytest.raises(ConfigError, match="--compile"):
        validate_config(TrainConfig(compile="sometimes", device="cpu"))


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(hotpath, "cpu_has_fast_bf16", lambda: False)
    assert "SLOWER" in hotpath.slow_precision_warning("bf16", torch.device("cpu"))
    assert hotpath.slow_precision_warning("fp32", torch.device("cpu")) is None
    monkeypatch.setattr(hotpath, "cpu_has_fast_bf16", lambda: True)
    assert hotpath.slow_precision_warning("bf16", torch.device("cpu")) is None


def test_bench_reports_a_tiny_configuration_as_json(cli):
    proc = cli("bench", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "32",
               "--compile", "false", "--device", "cpu", "--warmup", "1", "--iters", "2", "--windows", "2",
               "--vs", "--json", check=True)
    record = json.loads(proc.stdout)
    assert record["precision"] == "fp32" and record["compile"] is False
    assert record["images_per_sec_min"] <= record["images_per_sec"] <= record["images_per_sec_max"]
    assert len(record["window_images_per_sec"]) == 2
    assert record["ms_per_step"] == pytest.approx(32 * 1000 / record["images_per_sec"])
    assert 0 < record["gflop_per_image"] < 1  # depth 8 is tiny
    assert 0 < record["fraction_of_peak"] < 1.5
    assert record["peak_memory_mb"] > 0 and record["matmul_peak_tflops"] > 0
    assert record["baseline"]["images_per_sec"] > 0 and record["speedup_vs_baseline"] > 0


def test_bench_quick_is_an_eager_look_and_the_default_says_it_compiles(cli, monkeypatch):
    """A 'short' bench took 4 minutes: train's defaults mirror a 48,000-iteration run, which compiles (issue 39)."""
    from resbench.bench import measure

    timed = []

    def run_bench(cfg, warmup, iters, windows, vs, pack=1):
        timed.append((measure.will_compile(cfg), warmup, iters, windows))
        return {"images_per_sec": 1.0, "images_per_sec_min": 1.0, "images_per_sec_max": 1.0}

    monkeypatch.setattr(measure, "run_bench", run_bench)
    config = ("--data_name", "Digits_x32", "--resnet_depth", "8", "--device", "cpu", "--json")
    quick = cli("bench", *config, "--quick", check=True)
    assert timed.pop() == (False, 1, 3, 1) and "compiling" not in quick.stderr
    cli("bench", *config, "--quick", "--compile", "true", "--windows", "2", check=True)
    assert timed.pop() == (True, 1, 3, 2)  # what is given wins
    default = cli("bench", *config, check=True)
    assert timed.pop() == (True, 3, 10, 3)
    assert ("bench: compiling the training step first, as `train --compile auto` does for a run of 48,000 "
            "iterations (a long warm-up on a CPU); --quick for a quick look without it") in default.stderr
    helped = " ".join(cli("bench", "--help").stdout.split())
    assert "steps per timed window (default: 10; --quick: 3)" in helped


def test_bench_table_and_bad_flags(cli):
    table = cli("bench", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "16",
                "--optim_ni", "400", "--device", "cpu", "--warmup", "0", "--iters", "1", "--windows", "1",
                check=True).stdout
    assert "images/s" in table and "fraction of peak" in table
    # The default --compile auto leaves a 400-iteration CPU run eager, and the bench says which run it times.
    assert "a run of 400 iterations, which `train --compile auto` runs eager" in table
    proc = cli("bench", "--iters", "0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --iters")
