"""Training speed of two source trees, measured in one run: `resbench bench` of each, alternated.

    mkdir -p /tmp/before && git archive main src | tar -x -C /tmp/before   # the tree to compare against
    python benchmarks/ab_speed.py --before /tmp/before/src --after src \\
        --rounds 2 -- --resnet_depth 20 --compile false --device cpu --warmup 2 --iters 5 --windows 3

Each round runs the bench of `before` then `after` (the order flips every round), each in a fresh
process importing its own tree, so both see the same load on a shared machine. Everything after
`--` goes to `resbench bench` unchanged. Prints each invocation's images/s, then the medians of
the invocations and of all their windows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def bench(src: str, bench_args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    proc = subprocess.run([sys.executable, "-m", "resbench", "bench", "--json", *bench_args], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"bench of {src} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the src/ folder of the tree to compare against")
    parser.add_argument("--after", required=True, help="the src/ folder of the changed tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the flags of resbench bench")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    rates: dict[str, list[float]] = {"before": [], "after": []}
    windows: dict[str, list[float]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for name in order:
            record = bench(getattr(args, name), bench_args)
            rates[name].append(record["images_per_sec"])
            windows[name] += record["window_images_per_sec"]
            print(f"round {round_ + 1} {name:6}  {record['images_per_sec']:9.1f} images/s  "
                  f"windows {record['window_images_per_sec']}  ({record['precision']}, "
                  f"compile={record['compile']})", flush=True)
    for what, values in (("median of the invocations", rates), ("median of all windows", windows)):
        before, after = statistics.median(values["before"]), statistics.median(values["after"])
        print(f"{what}: before {before:.1f}, after {after:.1f} images/s (after/before {after / before:.3f})")


if __name__ == "__main__":
    main()
