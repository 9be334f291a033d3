"""`resbench sweep`: the plan of a grid, then its runs, one `resbench train` subprocess each (sweep/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resbench.errors import ResbenchError
from resbench.runtime import cpus
from resbench.sweep.grid import (READY_GRIDS, data_to_prepare, describe_plan, execute_all, load_grid, plan_runs,
                                 time_estimate, with_seeds)


def train_flags(remainder: list[str]) -> list[str]:
    """Train flags given after `--` (argparse keeps the separator in a REMAINDER argument)."""
    if remainder and remainder[0] != "--":
        raise ResbenchError(f"unexpected argument {remainder[0]!r}; put train flags after `--`")
    return remainder[1:]


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise ResbenchError("--jobs must be at least 1")
    source = f"{args.grid} grid" if args.grid in READY_GRIDS else f"grid {args.grid}"
    # Runs at once share the cores: each gets its share, not every core (unless the flags say otherwise).
    threads = cpus.threads_per_job(args.jobs) if args.jobs > 1 else None
    grid = with_seeds(load_grid(args.grid), args.seeds, source)
    runs = plan_runs(grid, args.runs_dir, train_flags(args.train_flags), source, threads)
    print(describe_plan(runs, args.jobs, show_commands=args.dry_run), flush=True)
    todo = [run for run in runs if run.state != "finished"]
    if threads is not None and todo:
        print(f"sweep: {args.jobs} runs at a time on {cpus.available_cores()} cores: --threads {threads} each "
              "(unless the train flags set --threads)")
    if todo and (busy := cpus.busy_warning()):
        print(busy, flush=True)
    if args.dry_run and todo:
        downloads = data_to_prepare(todo)
        print("data: " + ("every dataset is prepared" if not downloads else "to download and prepare:"))
        print("\n".join([*downloads, time_estimate(todo, args.jobs)]), flush=True)
    if args.dry_run or not todo:
        return 0
    failures = execute_all(todo, args.jobs)
    print(f"sweep: {len(todo) - len(failures)} of {len(todo)} runs finished", flush=True)
    for run, reason in failures:
        print(f"  failed: {run.save} ({reason})")
    return 1 if failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench sweep [--grid seed|FILE.toml] [--runs_dir DIR] [--jobs N] [--dry-run] [-- TRAIN FLAGS]`."""
    p = subparsers.add_parser(
        "sweep", help="train a grid of configurations (skips finished runs, resumes broken ones)",
        description="Train every configuration of a grid, each in <runs_dir>/<data_name>/<run name>. "
                    "Train flags after `--` are passed to every run, e.g. `-- --optim_ni 2000`.")
    p.add_argument("--grid", default="seed",
                   help="`seed`: the 26 published rows (docs/reference/seed-results.md, the tables this "
                        "project reproduces); `wd`: the reference's weight-decay sweep, those rows at weight decay "
                        "1e-4, 3e-4, 1e-3, 3e-3; or a TOML file with lists of data_name, precision "
                        "(fp32/fp16/bf16) and any train setting (resnet_depth, seed, optim_lr, ...) and a [flags] table")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run every grid point once per seed, e.g. --seeds 42 43 44 (table and compare then show "
                        "mean ± std and 95%% intervals)")
    p.add_argument("--runs_dir", type=Path, default=Path("runs"), help="where run folders go (default ./runs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at the same time on the one device, each with --threads cores/N")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the plan, the train commands, the datasets to download and a time estimate; "
                        "run nothing")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- followed by train flags for every run")
    p.set_defaults(func=run)
    return p
