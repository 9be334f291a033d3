"""Images/s of `resbench data import` on an ImageFolder tree of 32x32 PNGs, one process against all
cores, beside an ImageFolder-style pass over the same files.

    PYTHONPATH=src python benchmarks/import_speed.py [--images 50000] [--classes 10] [--rounds 2]

Writes a tree of --images PNGs (classes of equal size; each a smooth random picture with some
noise, so that a PNG is about as large as a CIFAR image saved as PNG, ~2-3 KB, rather than the
incompressible noise of random pixels) into a temporary folder, then runs the real command,
`python -m resbench data import` with `--workers 1` and with its default (one process per
available core), alternated for --rounds rounds, each into a fresh data root. Reported per run:
the command's wall time (Python's start and the writing of the .npy files included) and the
rate of its reading phase as its summary line gives it (listing the tree and decoding every
image). For comparison, the tree is read as `torchvision.datasets.ImageFolder` reads it by
default, without torchvision (no dependency of resbench): its listing (class folders sorted,
`os.walk` of each, sorted, files kept by extension) and its `pil_loader` (open the file, PIL
`Image.open`, `convert("RGB")`) for every file, in one process, once per round. Run it on a
quiet machine: other processes on the cores change the parallel figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
RATE = re.compile(r"read in ([\d.]+) s \(([\d,]+) images/s, (\d+) process")


def write_tree(root: Path, images: int, classes: int) -> int:
    """`images` 32x32 RGB PNGs under root/train/<class>/; their total size in bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(images):
        folder = root / "train" / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        pixels = np.clip(np.asarray(coarse, np.int16) + rng.integers(-8, 9, (32, 32, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.png"
        Image.fromarray(pixels).save(path)
        total += path.stat().st_size
    return total


def time_import(tree: Path, data_root: Path, workers: int | None) -> tuple[float, float, int]:
    """(wall seconds of the command, images/s of its reading phase, processes it decoded with)."""
    command = [sys.executable, "-m", "resbench", "data", "import", "Bench", str(tree), "--data_root", str(data_root)]
    command += ["--workers", str(workers)] if workers else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"resbench data import failed:\n{proc.stderr}")
    found = RATE.search(proc.stdout)
    return wall, float(found.group(2).replace(",", "")), int(found.group(3))


IMAGEFOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def time_imagefolder_style(tree: Path) -> float:
    """Images/s of torchvision's ImageFolder default pass over tree/train, rebuilt: its file listing,
    then its `pil_loader` on every file, sequentially (what a DataLoader with num_workers=0 does)."""
    start = time.perf_counter()
    root = tree / "train"
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    files = []
    for name in classes:
        for folder, _, names in sorted(os.walk(root / name, followlinks=True)):
            files += [os.path.join(folder, f) for f in sorted(names) if f.lower().endswith(IMAGEFOLDER_EXTENSIONS)]
    for path in files:
        with open(path, "rb") as f:
            Image.open(f).convert("RGB")
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternated serial/parallel pairs")
    args = parser.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        size = write_tree(Path(tmp) / "tree", args.images, args.classes)
        print(f"tree: {args.images:,} PNGs of 32x32 in {args.classes} classes, {size / args.images / 1024:.1f} KB "
              f"each on average, written in {time.perf_counter() - start:.0f} s")
        results: dict[str, list[tuple[float, float, int]]] = {"--workers 1": [], "default": []}
        imagefolder_rates = []
        for round_ in range(args.rounds):
            for label, workers in (("--workers 1", 1), ("default", None)):
                data_root = Path(tmp) / f"data-{round_}-{workers or 'all'}"
                results[label].append(time_import(Path(tmp) / "tree", data_root, workers))
                shutil.rmtree(data_root)  # 50,000 images are 150 MB a copy: keep one at a time
            imagefolder_rates.append(time_imagefolder_style(Path(tmp) / "tree"))
        for label, runs in results.items():
            walls, rates = [r[0] for r in runs], [r[1] for r in runs]
            print(f"data import {label:<12} ({runs[0][2]} process{'es' * (runs[0][2] > 1)}): reading "
                  f"{statistics.median(rates):,.0f} images/s (runs: {', '.join(f'{r:,.0f}' for r in rates)}), command "
                  f"{statistics.median(walls):.1f} s wall, {args.images / statistics.median(walls):,.0f} images/s end to end")
        print(f"ImageFolder-style pass (listing + pil_loader, 1 process): {statistics.median(imagefolder_rates):,.0f} "
              f"images/s (runs: {', '.join(f'{r:,.0f}' for r in imagefolder_rates)})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
