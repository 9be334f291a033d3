"""The CPU's training step in fp32, bf16 and fp16 autocast, eager and compiled, in one process (issue 23 §3).

    python benchmarks/cpu_precisions.py --depth 20 --windows 5 --iters 5
    ONEDNN_VERBOSE=1 python benchmarks/cpu_precisions.py --depth 20 --verbose-step   # which kernels oneDNN picks

Every variant is `resbench train`'s own step (`build_job`: channels_last, fused SGD, the run's autocast,
StepStats), on random uint8 images of CIFAR10_x32's shape through the real augmentation; windows are
interleaved so that every variant sees the same machine. fp16 is not a choice `resbench train` offers on a
CPU (it asks for CUDA); `--precisions fp16` times it, with the reference's constant loss scale, to see
whether a CPU's avx512_fp16 units would make the reference's own fp16 numerics the fast mixed-precision
path (on a 2-core Xeon with AMX, 2026-12-05: no, oneDNN's fp16 weight gradients run its `ref:any`
kernel, ~58 s per depth-20 step; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from resbench.bench.measure import generated_batches
from resbench.data.facts import dataset_spec
from resbench.device import hotpath
from resbench.settings.config import TrainConfig
from resbench.train.resume import RunState
from resbench.train.step import StepStats, build_job, learning_rate


def variant(cfg: TrainConfig, precision: str, compiled: bool):
    device = torch.device("cpu")
    cfg = dataclasses.replace(cfg, compile="true" if compiled else "false")
    job = build_job(cfg, dataset_spec(cfg.data_name, cfg.data_root), generated_batches(cfg, device), device, precision)
    stats = StepStats(RunState(), device)
    return lambda i: job.step(i, learning_rate(i, cfg), stats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fp32 bf16 fp16")
    parser.add_argument("--compile", nargs="+", default=["true", "false"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--verbose-step", action="store_true", help="one eager step per precision, nothing timed")
    args = parser.parse_args()
    cfg = TrainConfig(resnet_depth=args.depth, device="cpu", optim_ni=48_000)
    print(f"cpu {torch.backends.cpu.get_cpu_capability()}, fast bf16 {hotpath.cpu_has_fast_bf16()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    if args.verbose_step:
        for precision in args.precisions:
            print(f"--- {precision}", flush=True)
            variant(cfg, precision, False)(0)
        return
    steps = {f"{p} {'compiled' if c == 'true' else 'eager'}": variant(cfg, p, c == "true")
             for p in args.precisions for c in args.compile}
    for name, step in steps.items():
        start = time.perf_counter()
        for i in range(args.warmup):
            step(i)
        print(f"{name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for window in range(args.windows):
        for name, step in steps.items():
            start = time.perf_counter()
            loss = sum(step(args.warmup + window * args.iters + i) for i in range(args.iters))
            assert torch.isfinite(loss), name
            rates[name].append(args.iters * cfg.batch_size / (time.perf_counter() - start))
    fp32 = statistics.median(rates.get("fp32 compiled", [float("nan")]))
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:15} {median:8.1f} images/s  (x{median / fp32:.2f} fp32 compiled)  windows "
              f"{[round(v, 1) for v in values]}")


if __name__ == "__main__":
    main()
