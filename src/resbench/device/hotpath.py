"""The training hot path's choices, each one decided by measurement (benchmarks/RESULTS.md).

- Layout: channels_last on every device. On CPU oneDNN's convolutions run natively in NHWC and
  the data already arrives NHWC (`data.batches.to_model_input`); on CUDA cuDNN's NHWC kernels are the
  fast ones for fp16/bf16.
- Compilation: `torch.compile` of the model (forward and backward through AOTAutograd). It
  costs tens of seconds up front, so `auto` turns it on only for runs long enough to repay it
  (`COMPILE_MIN_ITERS`). On CUDA the step is bound by the host launching kernels (depth 20 on
  an H100: 6.5 ms/step eager and 6.7 ms compiled in default mode, of which 4 ms is GPU work),
  so CUDA uses mode "reduce-overhead", which replays the compiled forward and backward as CUDA
  graphs: 3.8 ms/step.
- Optimiser: the fused SGD kernel where this torch has one for the device (one kernel for all
  parameters instead of a Python loop; same update, see tests/device/test_hotpath.py), else foreach.
- Precision: autocast to fp16/bf16 for the mixed-precision rows: fp16 on CUDA, as the reference;
  bf16 on a CPU, where oneDNN runs bf16 convolutions on AMX/AVX-512-BF16 (depth 18 compiled: 2.96x
  the fp32 step on a 2-core Xeon with AMX) but fp16 weight gradients on its scalar reference kernel
  (58 s of convolutions for one depth-20 step). bf16 autocast on a CPU without native bf16
  instructions runs ~12x slower than fp32, so it is allowed but announced on stderr.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from resbench.console import log

# Iterations from which `--compile auto` compiles: the compile time divided by the time it saves
# per step, with a margin. CPU (2 cores, depth 20, batch 256): 50-90 s to compile, 0.11 s saved
# per step (350 -> 239 ms), so it pays after ~550 steps. CUDA (H100, depth 20): ~10-20 s to
# compile and capture, 2.3 ms saved per step, so it pays after ~8,000 steps.
COMPILE_MIN_ITERS = {"cpu": 1_000, "cuda": 10_000}
COMPILE_MODE = {"cuda": "reduce-overhead"}  # other devices: torch.compile's default mode
COMPILE_CHOICES = ("auto", "true", "false")


def parse_compile(choice: str | bool) -> str:
    """auto | true | false; accepts the bools of configs saved before `auto` existed."""
    text = str(choice).strip().lower()
    if text not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be auto, true or false, got {choice!r}")
    return text


def use_compile(choice: str | bool, device: torch.device, optim_ni: int) -> bool:
    """Whether to torch.compile: as asked, or with `auto` when the run repays the compile time."""
    text = parse_compile(choice)
    if text == "auto":
        return optim_ni >= COMPILE_MIN_ITERS.get(device.type, COMPILE_MIN_ITERS["cuda"])
    return text == "true"


def fused_sgd_available(device: torch.device) -> bool:
    """torch ships a fused SGD kernel for CUDA and CPU (2.4+); elsewhere use foreach."""
    return device.type in ("cuda", "cpu")


def make_optimizer(model: nn.Module, momentum: float, weight_decay: float,
                   device: torch.device) -> torch.optim.SGD:
    """The recipe's SGD (heavy ball, PyTorch-style weight decay) with the fastest kernel available.

    The momentum buffers start as zeros instead of being created by the first update: fused SGD
    creates them with `empty_like` and, when the loss scaler skips that first update (fp16
    overflow), keeps them uninitialised. From zero, the first update (0.9 * 0 + g) is the same.
    """
    kernel = {"fused": True} if fused_sgd_available(device) else {"foreach": True}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay, **kernel)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to `device` in channels_last, the layout its input already has."""
    return model.to(device, memory_format=torch.channels_last)


def step_model_of(model: nn.Module, compile_model: bool,
                  device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable the training step runs: the compiled model, or the model itself.

    Evaluation keeps using the eager `model` (it shares the parameters), so the compiled graph is
    never recompiled for BatchNorm's inference mode. CUDA graphs are safe in `train_step`: the
    logits are consumed by the loss and the gradients by the optimiser before the next replay
    overwrites them, and zero_grad(set_to_none=True) drops the graph-owned gradients each step.
    """
    if not compile_model:
        return model
    mode = COMPILE_MODE.get(device.type, "default")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        mode = "default"  # CUDA graphs around DDP's gradient all-reduce hooks are not verified here
    return torch.compile(model, mode=mode)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX-512 BF16 or AMX), read from cpuinfo.

    Measured: with AMX (2-core Xeon) a compiled bf16-autocast step took 0.55x the fp32 time at depth 20
    and 0.34x at depth 18; with AVX-512 BF16 alone (2-core EPYC, eager, depth 20) 0.7x; without either
    (AVX2 only) it was ~12x slower, because oneDNN emulates bf16 arithmetic.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def slow_precision_warning(precision: str, device: torch.device) -> str | None:
    """The warning to print when the chosen precision is slower than fp32 on this device."""
    if device.type == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
        return ("warning: --mixed_precision on this CPU means bf16 autocast, and this CPU has no native "
                "bf16 instructions (avx512_bf16/amx_bf16): training will be about 12x SLOWER than fp32. "
                "Use --mixed_precision false on CPU.")
    return None


def warn_if_slow_precision(precision: str, device: torch.device) -> None:
    message = slow_precision_warning(precision, device)
    if message:
        log(message)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a precision: none for fp32, else fp16/bf16 compute with fp32 weights."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it measures that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
