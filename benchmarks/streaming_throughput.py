"""Whether streaming the training images from their memory-mapped file keeps the step fed (issue 38).

Writes a synthetic training file in the prepared layout (random pixels: the figure is speed) and times,
interleaved in windows as `resbench bench` does (benchmarks share the machine's load alike):

- streamed batches alone: `device.streaming.StreamedBatches` gathering rows from the file in its prefetch
  thread, copying them to the device (pinned memory, its own CUDA stream) and augmenting them there,
  with no training step consuming them: the rate streaming can supply;
- the training step on images held on the device (`--data_placement device`);
- the same step fed by the streaming loader (`--data_placement stream`).

Streaming keeps up where the first figure is well above the second and the third equals the second. The
file is read from the page cache once written (a cold disk is slower; drop the caches to see it).

    python benchmarks/streaming_throughput.py --data_name ImageNet1k_x32 --resnet_depth 18 --batch_size 512 \\
        --mixed_precision true --device cuda
    python benchmarks/streaming_throughput.py --images 4096 --resnet_depth 8 --batch_size 64 --iters 5  # a CPU check
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch

from resbench.bench.measure import Trainer, bench_config, generated_batches, optimised_trainer, summarise, timed_windows
from resbench.data.facts import dataset_spec
from resbench.device.streaming import StreamedBatches
from resbench.settings.config import resolve_device


def synthetic_file(folder: Path, images: int, size: int) -> torch.Tensor:
    """A train_images.npy of random pixels, written in chunks, mapped as `data.prepared.load_splits` maps it."""
    path = folder / "train_images.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, size, size, 3))
    rng = np.random.default_rng(0)
    for start in range(0, images, 8192):
        out[start:start + 8192] = rng.integers(0, 256, out[start:start + 8192].shape, dtype=np.uint8)
    out.flush()
    del out
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def sequential(name: str, step) -> Trainer:
    """A trainer that takes its batches in order whatever step it is asked for (the prefetch thread restarts
    on a step out of order, as a resumed run's does: not what is timed here)."""
    counter = itertools.count()
    return Trainer(name, lambda i: step(next(counter)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_name", default="ImageNet1k_x32")
    parser.add_argument("--images", type=int, default=50_000, help="images in the synthetic training file")
    parser.add_argument("--resnet_depth", type=int, default=18)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--mixed_precision", default="false")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="false")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20, help="steps per window")
    parser.add_argument("--windows", type=int, default=3)
    args = parser.parse_args()
    cfg = bench_config({"data_name": args.data_name, "resnet_depth": args.resnet_depth, "batch_size": args.batch_size,
                        "mixed_precision": args.mixed_precision}, args.compile, args.device, 48_000)
    device, spec = resolve_device(cfg.device), dataset_spec(cfg.data_name)
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".streaming-bench-") as scratch:
        images = synthetic_file(Path(scratch), args.images, spec.image_size)
        labels = torch.randint(0, spec.num_classes, (args.images,)).to(device)
        alone = StreamedBatches(images, labels, cfg.batch_size, cfg.seed, device=device)
        feeding = StreamedBatches(images, labels, cfg.batch_size, cfg.seed, device=device)
        trainers = [sequential("streamed batches alone (gather, copy, augment)", lambda i: alone.batch(i)[0][0, 0, 0, 0]),
                    optimised_trainer(cfg, device, generated_batches(cfg, device)),
                    optimised_trainer(cfg, device, feeding)]
        trainers[1].name, trainers[2].name = "training step, images held on the device", "training step, images streamed"
        trainers[2] = sequential(trainers[2].name, trainers[2].step)
        seconds, _, _ = timed_windows(trainers, device, args.warmup, args.iters, args.windows, lambda: 0.0)
        alone.close()
        feeding.close()
    print(f"{cfg.data_name} ({spec.image_size} px), depth {cfg.resnet_depth}, batch {cfg.batch_size}, "
          f"{cfg.precision} on {device} ({torch.get_num_threads()} threads), {args.images:,} images in the file:")
    for trainer in trainers:
        result = summarise(seconds[trainer.name], args.iters, cfg.batch_size)
        print(f"  {trainer.name:<48} {result['images_per_sec']:>10,.0f} images/s "
              f"(windows {result['images_per_sec_min']:,.0f} to {result['images_per_sec_max']:,.0f})")


if __name__ == "__main__":
    main()
