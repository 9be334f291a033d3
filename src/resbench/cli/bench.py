"""`resbench bench`: training images/s of one configuration, or of every row of a grid (bench/).

Its flags are defined without torch, so that `--help` stays fast; the measurement imports it.

By default it measures what a run gets: train's defaults mirror a 48,000-iteration run, which
`--compile auto` compiles, so the warm-up compiles the step first (issue 39's "short" bench took 4
minutes on a 2-core CPU). `--quick` is a quick look: the eager step and 1 + 3 steps, timed once
(rougher, and slower than a compiled run)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from resbench.console import count, log, say
from resbench.settings.config import ConfigError, TrainConfig
from resbench.settings.flags import add_setting_flag

# Flags that describe one configuration; with --grid, the grid's rows give them.
CONFIG_FLAGS = ("data_name", "data_root", "resnet_depth", "resnet_width", "batch_size", "mixed_precision",
                "bn_groups")
# Where a train setting means something else to bench, its help says so; the others read as train's.
BENCH_HELP = {
    "data_name": "dataset whose image shape and class count to generate",
    "compile": "auto | true | false, or --compile alone for true (auto decides as `resbench train` would for "
               "--optim_ni; --quick: false)",
    "optim_ni": "the run length `--compile auto` decides for",
}
# The timing's steps: by default (a steadier figure) and with --quick (a quick look).
STEPS = {"warmup": 3, "iters": 10, "windows": 3}
QUICK_STEPS = {"warmup": 1, "iters": 3, "windows": 1}
STEPS_HELP = {"warmup": "untimed steps first (compilation happens here)", "iters": "steps per timed window",
              "windows": "timed windows (median and spread reported)"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench bench`: the configuration's flags are train's, with train's defaults
    (left out of the namespace when not given, so that `--grid` can refuse them)."""
    parser = subparsers.add_parser("bench", help="measure training images/s of one configuration or a whole grid",
                                   description="Training throughput of one configuration, measured against "
                                               "the device's peak, on generated data of the dataset's shape; "
                                               "or, with --grid, of every row of a sweep grid with what each run "
                                               "costs.")
    for name in CONFIG_FLAGS:  # left out of the namespace when not given, so that --grid can refuse them
        add_setting_flag(parser, name, help=BENCH_HELP.get(name))
    parser.add_argument("--grid", metavar="seed|wd|imagenet|FILE.toml", default=None,
                        help="time every row of a sweep grid instead (seed: the 26 rows of the published table; "
                             "imagenet: its six ImageNet rows, on this one device with the reference's per-device "
                             "BatchNorm as --bn_groups; or a grid file): images/s and minutes per run, evaluations "
                             "and warm-up included, beside the reference's wall time of the rows it ran, and the "
                             "total")
    defaults = TrainConfig()
    add_setting_flag(parser, "compile", help=BENCH_HELP["compile"])  # left out when not given: --quick decides
    for name in ("optim_ni", "device", "threads"):
        add_setting_flag(parser, name, default=getattr(defaults, name), help=BENCH_HELP.get(name))
    parser.add_argument("--quick", action="store_true",
                        help="a quick look: the eager step (unless --compile is given) and "
                             f"{QUICK_STEPS['warmup']} + {QUICK_STEPS['iters']} steps, no compilation; rougher, and "
                             "slower than a compiled run")
    for name, steps in STEPS.items():
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"{STEPS_HELP[name]} (default: {steps}; --quick: {QUICK_STEPS[name]})")
    parser.add_argument("--vs", action="store_true", help="also time a plain eager step, interleaved, for a ratio")
    parser.add_argument("--pack", type=int, default=1, metavar="K",
                        help="also time K seeds packed into one network (grouped convolutions), interleaved: "
                             "their images/s together against one run's")
    parser.add_argument("--json", action="store_true", help="print the record as JSON instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from resbench.bench.measure import bench_config, run_bench, spread_warning, will_compile
    from resbench.device import cpus

    for name, steps in (QUICK_STEPS if args.quick else STEPS).items():
        if getattr(args, name) is None:
            setattr(args, name, steps)
    args.compile = getattr(args, "compile", "false" if args.quick else TrainConfig.compile)
    for name, least in (("warmup", 0), ("iters", 1), ("windows", 1), ("threads", 1), ("pack", 1)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            raise ConfigError(f"--{name} must be an integer >= {least}, got {getattr(args, name)}")
    if busy := cpus.busy_warning(threads=args.threads):
        log(busy)
    cpus.use_threads(args.threads)
    if args.grid is not None:
        return run_grid_command(args)
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if hasattr(args, name)}
    cfg = bench_config(given, args.compile, args.device, args.optim_ni)
    if will_compile(cfg):
        log(f"bench: compiling the training step first, as `train --compile {args.compile}` does for a run of "
            f"{cfg.optim_ni:,} iterations (a long warm-up on a CPU); --quick for a quick look without it")
    record = run_bench(cfg, args.warmup, args.iters, args.windows, args.vs, args.pack)
    say(json.dumps(record, indent=2) if args.json else format_table(record))
    if warning := spread_warning(record):
        log(warning)
    return 0


def run_grid_command(args: argparse.Namespace) -> int:
    from resbench.bench.measure import run_grid

    if given := [f"--{name}" for name in CONFIG_FLAGS if hasattr(args, name)]:
        raise ConfigError(f"{', '.join(given)} cannot go with --grid: each row of the grid sets its own")
    if args.vs or args.pack > 1:
        raise ConfigError("--vs and --pack compare ways of training one configuration; leave them out with --grid")
    if not args.json:
        say(GRID_HEADER)
    result = run_grid(args.grid, args.device, args.compile, args.warmup, args.iters, args.windows,
                      report=(lambda row: None) if args.json else (lambda row: say(grid_line(row))))
    say(json.dumps(result, indent=2) if args.json else "\n" + grid_total(result))
    return 0


GRID_COLUMNS = ("data_name", "depth", "width", "precision", "images/s", "ms/step", "eval img/s",
                "warm-up s", "train min", "eval min", "run min", "reference min")
GRID_HEADER = "| " + " | ".join(GRID_COLUMNS) + " |\n|" + " --- |" * len(GRID_COLUMNS)


def grid_line(row: dict[str, Any]) -> str:
    """One row of the grid table (markdown), printed as soon as the row is measured."""
    groups = f", {row['bn_groups']} BatchNorm groups" if row.get("bn_groups", 1) > 1 else ""
    cells = (row["data_name"], row["depth"], row["width"],
             row["precision"] + (" compiled" if row["compile"] else "") + groups,
             f"{row['images_per_sec']:,.1f}", f"{row['ms_per_step']:.1f}", f"{row['eval_images_per_sec']:,.0f}",
             f"{row['warmup_seconds']:.0f}", f"{row['train_minutes']:,.1f}", f"{row['eval_minutes']:,.1f}",
             f"{row['run_minutes']:,.1f}", reference_cell(row))
    return "| " + " | ".join(map(str, cells)) + " |"


def reference_cell(row: dict[str, Any]) -> str:
    """What the reference's run of the row took, on how many GPUs (RTX 3090); empty where it has none."""
    if row.get("reference_minutes") is None:
        return ""
    gpus = row["reference_devices"]
    return f"{row['reference_minutes']:,.1f} on {gpus} GPU{'s' if gpus > 1 else ''}"


def grid_total(result: dict[str, Any]) -> str:
    total = result["total_minutes"]
    ran = [row for row in result["rows"] if row.get("reference_minutes") is not None]
    reference = (f"; the reference took {result['reference_minutes'] / 60:,.2f} h of wall time for the {len(ran)} of "
                 f"them it ran, on {'-'.join(map(str, sorted({row['reference_devices'] for row in ran})))} RTX 3090 "
                 "per run" if ran else "")
    return (f"{result['device']}, {count(result['threads'], 'thread')}, torch {result['torch']}: "
            f"{len(result['rows'])} runs of grid {result['grid']} take {total:,.1f} min = {total / 60:,.2f} h on this "
            "one device (measured rates × each run's steps and evaluation images, plus the measured warm-up; warm-up "
            f"{result['warmup']} steps, {result['windows']} windows of {result['iters']}){reference}")


def format_table(record: dict[str, Any]) -> str:
    """The record as an aligned two-column table, for people."""
    groups = f", {record['bn_groups']} BatchNorm groups" if record.get("bn_groups", 1) > 1 else ""
    rows = [
        ("device", f"{record['device']}, {count(record['threads'], 'thread')}, torch {record['torch']}"),
        ("configuration", f"{record['data_name']} depth {record['depth']} width {record['width']} "
                          f"batch {record['batch_size']} {record['precision']}"
                          f"{' compiled' if record['compile'] else ''}{groups}"),
        ("mirrors", f"a run of {record['optim_ni']:,} iterations, which `train --compile {record['compile_choice']}` "
                    f"{'compiles' if record['compile'] else 'runs eager'} (--optim_ni N mirrors another length)"),
        ("images/s", f"{record['images_per_sec']:.1f} (median of {count(record['windows'], 'window')}, "
                     f"{record['images_per_sec_min']:.1f}..{record['images_per_sec_max']:.1f})"),
        ("ms/step", f"{record['ms_per_step']:.2f}"),
        ("48k iterations", f"{record['minutes_per_48k_iters']:.1f} min"),
        ("peak memory", f"{record['peak_memory_mb']:.0f} MiB"),
        ("model FLOPs", f"{record['gflop_per_image']:.3f} GFLOP/image (fwd+bwd, counted)"),
        ("achieved", f"{record['achieved_tflops'] * 1e3:.1f} GFLOP/s"),
        ("matmul peak", f"{record['matmul_peak_tflops'] * 1e3:.1f} GFLOP/s ({record['matmul_peak_dtype']})"),
        ("fraction of peak", f"{100 * record['fraction_of_peak']:.1f}%"),
    ]
    if "baseline" in record:
        rows.append(("plain eager", f"{record['baseline']['images_per_sec']:.1f} images/s "
                                    f"({record['speedup_vs_baseline']:.2f}x speed-up)"))
    if "packed" in record:
        packed_runs = record["packed"]
        rows.append((f"{packed_runs['runs']} runs packed", f"{packed_runs['images_per_sec']:.1f} images/s together "
                     f"({packed_runs['speedup_vs_one_run']:.2f}x one run's)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
