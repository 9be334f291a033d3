"""Depth 20, batch 256, fp32 on CPU: where the whole training loop stands against its parts.

    PYTHONPATH=src python benchmarks/cpu_variants.py [WINDOWS]

Times, in one process with windows interleaved: the plain eager step, resbench's eager and
compiled loops, the bare compiled step on one fixed batch (no data path), and the data path alone.
The whole compiled loop should be within a few percent of the bare compiled step.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from resbench.bench import measure as bench
from resbench.settings import config

DEVICE = torch.device("cpu")
ITERS = 3  # steps per window


class FixedBatch:
    """Stands in for TrainBatches: always the same batch, so only the step itself is timed."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]):
        self._batch = batch

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch


def settings(compile_choice: str) -> config.TrainConfig:
    return config.TrainConfig(resnet_depth=20, device="cpu", compile=compile_choice)


def main(windows: int) -> None:
    batches = bench.generated_batches(settings("false"), DEVICE)
    variants = {
        "plain_eager": bench.plain_trainer(settings("false"), DEVICE, batches).step,
        "resbench_eager": bench.optimised_trainer(settings("false"), DEVICE, batches).step,
        "resbench_compiled": bench.optimised_trainer(settings("true"), DEVICE, batches).step,
        "bare_compiled_step": bench.optimised_trainer(settings("true"), DEVICE, FixedBatch(batches.batch(0))).step,
        "data_only": lambda i: batches.batch(i)[0].sum(),
    }
    for step in variants.values():  # warm-up, compilation included
        for i in range(2):
            step(i)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for window in range(windows):
        for name, step in variants.items():
            start, loss_sum = time.perf_counter(), torch.zeros(())
            for i in range(ITERS):
                loss_sum += step(i)
            loss_sum.item()
            rates[name].append(ITERS * 256 / (time.perf_counter() - start))
        print("window", window, {name: round(r[-1]) for name, r in rates.items()}, flush=True)
    for name, r in rates.items():
        print(f"{name:20s} median images/s {statistics.median(r):9.1f}  {[round(x) for x in r]}")
    print("matmul peak GFLOP/s", round(bench.matmul_peak(DEVICE, torch.float32, tf32=False) / 1e9, 1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
