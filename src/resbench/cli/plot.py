"""`resbench plot RUNS_DIR`: PNG figures of the runs below a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from resbench.console import printable, say


def run(args: argparse.Namespace) -> int:
    from resbench.results.plots import write_plots

    for path in write_plots(args.runs_dir, args.out, args.compare == "reference"):
        say(printable(path))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench plot RUNS_DIR [--out DIR] [--compare reference]`."""
    p = subparsers.add_parser("plot", help="PNG figures: learning curves, ours vs published, ours over the reference's",
                              description="Write PNG figures for the runs below RUNS_DIR: per dataset, learning curves "
                                          "(mean and band over seeds), ours − published with 95% intervals, and with "
                                          "--compare reference our curves over the reference's. Needs matplotlib.")
    p.add_argument("runs_dir", type=Path, help="folder searched recursively for run folders")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUNS_DIR/plots)")
    p.add_argument("--compare", choices=["reference"], default=None,
                   help="also draw our val_acc, trn_loss and w_norm over the reference's runs, one row per cell")
    p.set_defaults(func=run)
    return p

