"""`resbench train`'s own speed against `resbench bench`, measured in one run (issue 23 §1).

    python benchmarks/loop_vs_bench.py --compile true false
    python benchmarks/loop_vs_bench.py --src /tmp/before/src --compile true   # another source tree

For each --compile choice: `resbench bench` of the configuration, then a `resbench train` of the same
configuration on a synthetic CIFAR10_x32 of the real size (random pixels: the figure is speed, not
accuracy) for --iters iterations with one evaluation at the end, then `bench` again, each in a fresh
process, one after the other; with --rounds N, N runs with a bench before and after each. Prints
the bench figures, each run's overall and steady-state images/s from its summary.json against the
mean of the benches on either side of it (a shared machine drifts within minutes), where the run's
wall clock went, and the process's own wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_cifar(root: Path) -> None:
    """CIFAR10_x32's prepared files (resbench's layout) filled with random pixels, once."""
    folder = root / "CIFAR10_x32"
    if (folder / "test_labels.npy").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 50_000), ("test", 10_000)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 10, n, dtype=np.int64))


def resbench(src: str | None, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src)) if src else None
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "resbench", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"resbench {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=None, help="the src/ folder to run (default: the installed resbench)")
    parser.add_argument("--compile", nargs="+", default=["true", "false"])
    parser.add_argument("--iters", type=int, default=400, help="iterations of the train run")
    parser.add_argument("--rounds", type=int, default=1, help="train runs per compile choice, each between two benches")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--data_root", default=str(Path(tempfile.gettempdir()) / "resbench-synthetic"))
    args = parser.parse_args()
    synthetic_cifar(Path(args.data_root))
    shape = ["--resnet_depth", str(args.depth), "--batch_size", "256", "--device", "cpu"]
    print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
    for choice in args.compile:
        bench_args = ["bench", *shape, "--compile", choice, "--warmup", "3", "--iters", "10", "--windows", "3", "--json"]
        before = json.loads(resbench(args.src, bench_args)[0].stdout)
        ratios = []
        for round_ in range(args.rounds):
            with tempfile.TemporaryDirectory() as runs:
                save = Path(runs) / "run"
                proc, process_seconds = resbench(args.src, [
                    "train", *shape, "--data_name", "CIFAR10_x32", "--data_root", args.data_root,
                    "--optim_ni", str(args.iters), "--eval_every", str(args.iters), "--compile", choice,
                    "--save", str(save)])
                summary = json.loads((save / "summary.json").read_text())
            after = json.loads(resbench(args.src, bench_args)[0].stdout)
            benches = [before["images_per_sec"], after["images_per_sec"]]
            print(f"\n--compile {choice}, run {round_ + 1}: bench {benches[0]:.1f} and {benches[1]:.1f} images/s "
                  f"(windows {before['window_images_per_sec']}, {after['window_images_per_sec']})")
            print(f"  train summary images_per_sec {summary['images_per_sec']:.1f}, "
                  f"overall/bench {summary['images_per_sec'] / np.mean(benches):.3f}")
            if "steady_images_per_sec" in summary:
                ratios.append(summary["steady_images_per_sec"] / np.mean(benches))
                print(f"  train steady_images_per_sec {summary['steady_images_per_sec']:.1f}, "
                      f"steady/bench {ratios[-1]:.3f}")
                print(f"  time: {json.dumps(summary.get('time'))}")
            print(f"  wall_seconds {summary['wall_seconds']:.1f}, the train process {process_seconds:.1f} s")
            print("  last log lines:\n    " + "\n    ".join(proc.stderr.strip().splitlines()[-3:]), flush=True)
            before = after
        if ratios:
            print(f"--compile {choice}: steady/bench {[round(float(r), 3) for r in ratios]}, median {np.median(ratios):.3f}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
