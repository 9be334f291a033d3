"""Images/s of `resbench eval --corruptions` on a CIFAR-10-C-shaped set, on this machine's default device.

    PYTHONPATH=src python benchmarks/eval_throughput.py [--per_severity 1000] [--depth 20] [--device auto]

CIFAR-10-C itself (2.9 GB) is not needed: the script writes random uint8 arrays in its prepared
layout (19 corruptions x 5 severities x --per_severity images, 10,000 at full size), a random
CIFAR10_x32 and a run folder with a random model, into a temporary folder, then runs the real
command and sums the per-corruption lines it prints on stderr. The figure is the scoring of the
corrupted images, loading each corruption's file and moving it to the device included.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from resbench.data.recipes import cifar_c
from resbench.models.resnet import resnet

LINE = re.compile(r"CIFAR10_C \w+: ([\d,]+) images x 1 model\(s\) in ([\d.]+) s")


def write_fake_data(root: Path, per_severity: int, depth: int) -> Path:
    rng = np.random.default_rng(0)
    clean = root / "data" / "CIFAR10_x32"
    clean.mkdir(parents=True)
    for split, n in (("train", 50_000), ("test", 10_000)):
        np.save(clean / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(clean / f"{split}_labels.npy", rng.integers(0, 10, n))
    corrupted = root / "data" / "CIFAR10_C"
    corrupted.mkdir()
    np.save(corrupted / "labels.npy", np.tile(rng.integers(0, 10, per_severity), 5))
    for name in cifar_c.CORRUPTIONS:
        np.save(corrupted / f"{name}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8))
    run = root / "run"
    run.mkdir()
    torch.save(resnet(depth, 1, 10, 32).state_dict(), run / "best.pt")
    (run / "config.json").write_text(json.dumps({"data_name": "CIFAR10_x32", "resnet_depth": depth,
                                                 "resnet_width": 1, "data_root": str(root / "data")}))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per_severity", type=int, default=1000, help="images per severity (CIFAR-10-C: 10,000)")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval_batch_size", default=None, help="eval --eval_batch_size (default: eval's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = write_fake_data(Path(tmp), args.per_severity, args.depth)
        command = [sys.executable, "-m", "resbench", "eval", "--ckpt", str(run), "--corruptions",
                   "--device", args.device, *(["--eval_batch_size", args.eval_batch_size] if args.eval_batch_size else [])]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
    timed = [(int(n.replace(",", "")), float(s)) for n, s in LINE.findall(proc.stderr)]
    images, seconds = sum(n for n, _ in timed), sum(s for _, s in timed)
    print(f"depth {args.depth}: {images:,} corrupted images in {seconds:.1f} s = {images / seconds:,.0f} images/s; "
          f"CIFAR-10-C's 950,000 would take {950_000 / (images / seconds) / 60:.1f} min at this rate")


if __name__ == "__main__":
    main()
