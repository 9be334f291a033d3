"""Peak memory of preparing a downsampled-ImageNet set: the x64 train set is 15.7 GB, so preparing it must
never hold it (issue 38: peak below 1.3x one copy of the images).

Builds synthetic archives in the official format (10 training batches of --images / 10 images at 64 px and
a validation set, labels 1..1000; npz or pickled variant) in a scratch folder, then prepares them with
`resbench.data.fetch.prepare.prepare_dataset` in a child process, whose peak resident memory (VmHWM) is the
figure: the building is not counted. Peak RSS is not sensitive to the machine's load.

    python benchmarks/imagenet_prepare_memory.py --images 100000 --variant npz
    python benchmarks/imagenet_prepare_memory.py --images 100000 --variant pickled
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

NAME, SIZE = "ImageNet1k_x64", 64


def batch_member(rng: np.random.Generator, n: int, variant: str) -> bytes:
    rows = rng.integers(0, 256, (n, 3 * SIZE * SIZE), dtype=np.uint8)
    labels = rng.integers(1, 1001, n)
    if variant == "pickled":
        return pickle.dumps({"data": rows, "labels": labels.tolist(), "mean": np.zeros(rows.shape[1])})
    out = io.BytesIO()
    np.savez(out, data=rows, labels=labels, mean=np.zeros(rows.shape[1]))
    return out.getvalue()


def build(downloads: Path, images: int, val: int, variant: str) -> None:
    """The official 64 px archives (two training parts and the validation archive), one batch in memory at a time."""
    suffix, ext = ("_npz", ".npz") if variant == "npz" else ("", "")
    rng = np.random.default_rng(0)
    sizes = [images // 10] * 9 + [images - 9 * (images // 10)]
    downloads.mkdir(parents=True)
    for part, batches in (("_train_part1", range(5)), ("_train_part2", range(5, 10)), ("_val", [None])):
        name = f"Imagenet64{part}{suffix}"
        with zipfile.ZipFile(downloads / f"{name}.zip", "w", zipfile.ZIP_STORED) as zf:
            for i in batches:
                member = f"val_data{ext}" if i is None else f"train_data_batch_{i + 1}{ext}"
                zf.writestr(f"{name}/{member}", batch_member(rng, val if i is None else sizes[i], variant))


def prepare_in_child(root: Path, images: int, val: int) -> dict:
    """Prepare in this process with the counts shrunk, and report the peak resident memory."""
    from resbench.data import facts
    from resbench.data.fetch.prepare import prepare_dataset

    facts.DATASETS[NAME] = dataclasses.replace(facts.DATASETS[NAME], num_train=images, num_test=val)
    prepare_dataset(NAME, root)
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"peak_rss_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="training images (default 100,000)")
    parser.add_argument("--val", type=int, default=4_000, help="validation images (default 4,000: the official "
                                                                "50,000 of 1,281,167, scaled)")
    parser.add_argument("--variant", choices=("npz", "pickled"), default="npz")
    parser.add_argument("--child", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(prepare_in_child(Path(args.child), args.images, args.val)))
        return
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".imagenet-bench-") as scratch:
        root = Path(scratch)
        build(root / "downloads", args.images, args.val, args.variant)
        done = subprocess.run([sys.executable, __file__, "--child", str(root), "--images", str(args.images),
                               "--val", str(args.val)], check=True, capture_output=True, text=True)
        peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
        copy = (args.images + args.val) * 3 * SIZE * SIZE
        prepared = sum(f.stat().st_size for f in (root / NAME).glob("*_images.npy"))
    print(f"{args.variant} variant, {args.images:,} training + {args.val:,} validation images at 64 px: "
          f"one copy of the images {copy / 2**20:,.0f} MiB (prepared: {prepared / 2**20:,.0f} MiB); peak RSS of the "
          f"preparing process {peak / 2**20:,.0f} MiB = {peak / copy:.2f}x one copy")


if __name__ == "__main__":
    main()
