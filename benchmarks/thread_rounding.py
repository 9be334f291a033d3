"""Do a run's numbers depend on --threads (or --compile)? Train a few steps each way and compare.

Each variant runs in its own process (the thread count is per process); the same variant twice
must give the same bits, variants may differ in float rounding. This is what config.py's
RESUMABLE_CHANGES comment reports.

    python benchmarks/thread_rounding.py [--steps 20] [--depth 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

VARIANT = r"""
import sys, torch
from resbench.data.batches import TrainBatches
from resbench.models import resnet as models
from resbench.device import hotpath
from resbench.settings.config import TrainConfig
from resbench.train.step import learning_rate, train_step
threads, compiled, depth, steps = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
out = sys.argv[5]
torch.set_num_threads(threads)
cfg, device = TrainConfig(resnet_depth=depth, batch_size=64, optim_ni=1000), torch.device("cpu")
gen = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (2048, 32, 32, 3), dtype=torch.uint8, generator=gen)
batches = TrainBatches(images, torch.randint(0, 10, (2048,), generator=gen), 64, 42)
torch.manual_seed(42)
model = hotpath.prepare_model(models.resnet(depth, 1, 10, 32), device)
optimizer = hotpath.make_optimizer(model, 0.9, 1e-3, device)
step_model = hotpath.step_model_of(model, compiled, device)
scaler, autocast = torch.amp.GradScaler("cpu", enabled=False), hotpath.autocast_for("fp32", device)
for i in range(steps):
    train_step(step_model, optimizer, scaler, *batches.batch(i), learning_rate(i, cfg) + 0.05, cfg, autocast)
torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
"""


def relative_difference(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys) ** 0.5
    return float(num / sum((b[k].double() ** 2).sum() for k in keys) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--depth", type=int, default=8)
    args = parser.parse_args()
    src = str(Path(__file__).resolve().parents[1] / "src")
    variants = {"2 threads": (2, 0), "2 threads again": (2, 0), "1 thread": (1, 0), "2 threads, compiled": (2, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = {}
        for name, (threads, compiled) in variants.items():
            out = Path(tmp) / f"{len(weights)}.pt"
            subprocess.run([sys.executable, "-c", VARIANT, str(threads), str(compiled), str(args.depth),
                            str(args.steps), str(out)], check=True, env={**os.environ, "PYTHONPATH": src})
            weights[name] = torch.load(out, weights_only=True)
    base = weights["2 threads"]
    for name, other in weights.items():
        if name != "2 threads":
            same = all(torch.equal(base[k], other[k]) for k in base)
            print(f"{name:20} vs 2 threads: {'identical' if same else 'differ'}, relative L2 weight difference "
                  f"{relative_difference(other, base):.2e} after {args.steps} steps of depth {args.depth}")


if __name__ == "__main__":
    main()
