"""Where a compiled training step spends its time, and compile modes side by side (CPU or CUDA).

    PYTHONPATH=src python3 benchmarks/profile_step.py --device cuda [--depth 20] [--modes default,reduce-overhead]
    PYTHONPATH=src python3 benchmarks/profile_step.py --device cpu --steps 3 --iters 3 --modes default

First profiles `--steps` steps of resbench's default-mode compiled step and prints the time per
step by kind of work and the top operations: on CUDA the GPU kernels (default mode launches the
same kernels that CUDA graphs replay, one by one, so the profiler sees each); on CPU each
operator's own time, where "fused elementwise" is the inductor-generated C++ (BatchNorm, ReLU,
residual add) run inside the compiled graph. Then, for each torch.compile mode, builds resbench's
own trainer (bench.optimised_trainer: the real data path, train_step and optimiser) and times them
in one process with windows interleaved, printing images/s per window and the compile time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from resbench.bench import measure as bench
from resbench.device import hotpath
from resbench.settings import config

GROUPS = (  # name fragments -> the kind of work, first match wins (cuDNN kernels, then aten/oneDNN ops)
    (("wgrad", "dgrad", "bprop", "backward_data", "backward_filter", "convolution_backward"), "conv backward"),
    (("conv", "xmma", "implicit", "cudnn", "sm90", "sm80"), "conv forward (and other cuDNN)"),
    (("triton", "compiledfxgraph", "cpp_fused"), "fused elementwise + reductions (BN, ReLU, add)"),
    (("sgd", "multi_tensor", "foreach"), "optimiser"),
    (("gemm", "gemv", "cutlass", "aten::mm", "addmm"), "matmul (classifier)"),
    (("gather", "index", "randint", "randperm", "flip", "where", "uint8", "aten::to", "copy_"), "data path"),
)


def trainer_for(mode: str, depth: int, device: torch.device, precision: str = "false") -> bench.Trainer:
    cfg = config.TrainConfig(resnet_depth=depth, device=device.type, compile="true", mixed_precision=precision)
    hotpath.COMPILE_MODE[device.type] = mode  # read when the trainer compiles its model
    return bench.optimised_trainer(cfg, device, bench.generated_batches(cfg, device))


def time_modes(modes: list[str], depth: int, device: torch.device, iters: int, windows: int,
               precision: str = "false") -> None:
    trainers = {}
    for mode in modes:
        start = time.perf_counter()
        trainer = trainer_for(mode, depth, device, precision)
        for i in range(3):
            trainer.step(i)
        hotpath.sync(device)
        print(f"{mode}: compile + 3 warm-up steps {time.perf_counter() - start:.1f} s", flush=True)
        trainers[mode] = trainer
    rates = defaultdict(list)
    for window in range(windows):
        for mode, trainer in trainers.items():
            loss = torch.zeros((), device=device)
            start = time.perf_counter()
            for i in range(window * iters, (window + 1) * iters):
                loss += trainer.step(i)
            loss.item()
            rates[mode].append(iters * 256 / (time.perf_counter() - start))
    for mode, values in rates.items():
        print(f"{mode}: median {statistics.median(values):,.0f} images/s, "
              f"{1000 * 256 / statistics.median(values):.2f} ms/step, windows {[round(v) for v in values]}")


def op_times(prof: profile, device: torch.device, steps: int) -> dict[str, float]:
    """Microseconds per step for each kernel (CUDA) or operator's own time (CPU)."""
    if device.type == "cuda":
        return {e.key: e.device_time_total / steps for e in prof.key_averages()
                if e.device_type == torch.autograd.DeviceType.CUDA}
    return {e.key: e.self_cpu_time_total / steps for e in prof.key_averages() if e.self_cpu_time_total > 0}


def profile_step(depth: int, device: torch.device, steps: int, precision: str = "false") -> None:
    trainer = trainer_for("default", depth, device, precision)
    for i in range(3):
        trainer.step(i)
    hotpath.sync(device)
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for i in range(3, 3 + steps):
            trainer.step(i)
        hotpath.sync(device)
    times = op_times(prof, device, steps)
    total = sum(times.values())
    if not total:
        print("the profiler saw no work")
        return
    print(f"{'GPU kernel' if device.type == 'cuda' else 'CPU operator'} time per step: {total / 1000:.2f} ms "
          f"({len(times)} distinct)")
    grouped = defaultdict(float)
    for name, us in times.items():
        group = next((g for frags, g in GROUPS if any(f in name.lower() for f in frags)), "other")
        grouped[group] += us
    for group, us in sorted(grouped.items(), key=lambda kv: -kv[1]):
        print(f"  {us / 1000:8.3f} ms  {100 * us / total:5.1f}%  {group}")
    print("top (ms/step, name):")
    for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {us / 1000:8.3f}  {name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--mixed_precision", default="false", help="as train's: false | true | fp16 | bf16")
    parser.add_argument("--modes", default="default,reduce-overhead", help="comma-separated torch.compile modes")
    parser.add_argument("--steps", type=int, default=20, help="steps profiled")
    parser.add_argument("--iters", type=int, default=50, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args()
    device = config.resolve_device(args.device)
    print(bench.device_name(device), "torch", torch.__version__, flush=True)
    profile_step(args.depth, device, args.steps, args.mixed_precision)
    if args.modes:
        time_modes(args.modes.split(","), args.depth, device, args.iters, args.windows, args.mixed_precision)


if __name__ == "__main__":
    main()
