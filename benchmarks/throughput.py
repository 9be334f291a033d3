"""Training images/s of depth 20 and depth 18 at batch 256 on this machine's default device.

    PYTHONPATH=src python benchmarks/throughput.py [--iters N] [--windows N]

A thin wrapper over `resbench bench` (same measurement, same hot path as `resbench train`, with
`--compile auto` deciding as for a full 48k-iteration row); run `resbench bench --help` for more.
"""

from __future__ import annotations

import argparse

from resbench.bench.measure import run_bench
from resbench.settings.config import TrainConfig
from resbench.train.checks import validate_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=5, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows")
    args = parser.parse_args()
    for depth in (20, 18):
        cfg = TrainConfig(resnet_depth=depth, batch_size=256)
        validate_config(cfg)
        record = run_bench(cfg, warmup=2, iters=args.iters, windows=args.windows, vs=False)
        print(f"depth {depth:3d}  {record['precision']}  compile={record['compile']!s:5}  "
              f"{record['images_per_sec']:10.1f} images/s  ({record['device']})", flush=True)


if __name__ == "__main__":
    main()
