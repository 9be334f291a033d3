"""The fast hot path (device/hotpath.py) trains the same model as the plain one: fused SGD, channels_last,
compiled steps; and when it compiles, and when it warns of a slow precision."""

import json

import pytest
import torch

from resbench.device import hotpath
from resbench.device.hotpath import autocast_for
from resbench.models.resnet import resnet
from resbench.settings.config import ConfigError, TrainConfig
from resbench.train.checks import validate_config
from resbench.train.lossscale import ConstantLossScale
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
