"""`resbench sweep`: train every configuration of a grid, skipping finished runs and resuming broken ones.

Each run is a `python -m resbench train ... --save <runs_dir>/<data_name>/<run name>` subprocess, so
a crash or out-of-memory in one run cannot take the others down, several can share one device
(`--jobs`), and re-running the same sweep after an interruption continues where it stopped: the
folder name is derived from the configuration, finished folders hold summary.json, and the
trainer resumes a folder it finds half done.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import cpus
from .config import (TrainConfig, canonical, config_from_args, default_run_name, flag_value, train_flag_parser,
                     validate_config)
from .errors import ResbenchError
from .progress import clock
from .reference import reference_lookup, reference_rows

GRID_AXES = {"data_name": "--data_name", "resnet_depth": "--resnet_depth", "resnet_width": "--resnet_width",
             "precision": None, "seed": "--seed"}
# fp16 as the seed means it: mixed precision, which the trainer runs as bf16 where fp16 is unsupported.
PRECISION_FLAGS = {"fp32": [], "fp16": ["--mixed_precision", "true"], "bf16": ["--mixed_precision", "bf16"]}
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# Train flags a sweep sets itself: each run's folder is derived from its settings, below --runs_dir.
SWEEP_OWNED_FLAGS = ("save", "resume")


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the sweep: its folder, the train flags (without --save) and their settings."""

    save: Path
    flags: tuple[str, ...]
    config: TrainConfig = field(compare=False)

    @property
    def state(self) -> str:
        """'finished' (skipped), 'resume' (folder exists, no summary yet) or 'new'."""
        if (self.save / "summary.json").exists():
            return "finished"
        return "resume" if self.save.exists() else "new"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "resbench", "train", *self.flags, "--save", str(self.save)]


# ---------------------------------------------------------------- grids

def seed_grid() -> list[list[str]]:
    """The 26 rows of seed-results.md, as train flags (trainer defaults give the seed's recipe)."""
    return [["--data_name", row.data_name, "--resnet_depth", str(row.depth), "--resnet_width", str(row.width),
             *PRECISION_FLAGS[row.precision]] for row in reference_rows()]


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def toml_grid(path: Path) -> list[list[str]]:
    """The cartesian product of a user grid file's axes, each with the `[flags]` table appended."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        spec = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ResbenchError(f"cannot read grid {path}: {exc}") from None
    fixed = spec.pop("flags", {})
    if not isinstance(fixed, dict):
        raise ResbenchError(f"grid {path}: flags must be a table: a [flags] line followed by name = value lines")
    unknown = set(spec) - set(GRID_AXES)
    if unknown:
        raise ResbenchError(f"grid {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(GRID_AXES)} and a [flags] table")
    if "data_name" not in spec:
        raise ResbenchError(f"grid {path}: data_name is required")
    axes = {key: as_list(spec[key]) for key in GRID_AXES if key in spec}
    if empty := [key for key, values in axes.items() if not values]:
        raise ResbenchError(f"grid {path}: {', '.join(empty)} is an empty list, so the grid has no runs")
    bad = [value for value in axes.get("precision", []) if not isinstance(value, str) or value not in PRECISION_FLAGS]
    if bad:
        raise ResbenchError(f"grid {path}: precision must be one of {', '.join(PRECISION_FLAGS)}, not {bad[0]!r}")
    fixed_flags = [part for key, value in fixed.items() for part in (f"--{key}", flag_value(value))]
    return [axis_flags(dict(zip(axes, values))) + fixed_flags for values in itertools.product(*axes.values())]


def axis_flags(point: dict) -> list[str]:
    """Train flags for one point of the grid."""
    flags = []
    for key, value in point.items():
        flags += PRECISION_FLAGS[value] if key == "precision" else [GRID_AXES[key], flag_value(value)]
    return flags


def load_grid(grid: str) -> list[list[str]]:
    return seed_grid() if grid == "seed" else toml_grid(Path(grid))


# ---------------------------------------------------------------- planning

def parse_train_flags(flags: list[str]) -> argparse.Namespace:
    """The train CLI's own parse of `flags`, so sweep and train agree on every setting.

    argparse answers a bad value by printing the whole train usage and exiting; only its one-line
    reason is kept, so the caller can say which grid row it came from.
    """
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            args, unknown = train_flag_parser().parse_known_args(flags)
    except SystemExit as exc:
        if not exc.code:  # --help: the train help is printed, nothing is wrong
            raise
        raise ResbenchError(usage.getvalue().strip().splitlines()[-1].partition("error: ")[2]) from None
    if unknown:
        hint = "; --runs_dir is a sweep option: put it before `--`" if any("runs_dir" in u for u in unknown) else ""
        raise ResbenchError(f"unknown train flag(s): {' '.join(unknown)}{hint}")
    return args


def plan_run(runs_dir: Path, flags: list[str], threads: int | None = None) -> PlannedRun:
    """A train command in its folder <runs_dir>/<data_name>/<run name>, checked as `resbench train`
    would check it; `--threads threads` is added unless the flags set the threads themselves.

    Checking at planning time makes a bad grid fail at once (and under --dry-run), not once per
    run after its folder was created.
    """
    args = parse_train_flags(flags)
    if owned := [f"--{name}" for name in SWEEP_OWNED_FLAGS if getattr(args, name, None) is not None]:
        raise ResbenchError(f"{', '.join(owned)} cannot be a flag of a sweep: each run gets its own folder "
                            "<runs_dir>/<data_name>/<run name>; set --runs_dir instead")
    if threads is not None and not hasattr(args, "threads"):
        flags, args.threads = [*flags, "--threads", str(threads)], threads
    config = config_from_args(args)
    validate_config(config)
    return PlannedRun(Path(runs_dir) / config.data_name / default_run_name(config), tuple(flags), config)


def check_runs_dir(runs_dir: Path) -> None:
    """Refuse a --runs_dir below a file, which every run would only discover when creating its folder."""
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResbenchError(f"--runs_dir {runs_dir} is not a folder ({existing} is a file); name a folder")


def plan_runs(grid: list[list[str]], runs_dir: Path, extra_flags: list[str], source: str,
              threads: int | None = None) -> list[PlannedRun]:
    """Each grid point with its run folder; points that map to the same folder run once.

    A point that `resbench train` would refuse stops the plan with an error naming `source` and the point.
    """
    check_runs_dir(Path(runs_dir))
    runs: dict[Path, PlannedRun] = {}
    for number, point in enumerate(grid, 1):
        flags = (*point, *extra_flags)
        try:
            run = plan_run(runs_dir, list(flags), threads)
        except ResbenchError as exc:
            raise ResbenchError(f"{source}, run {number} of {len(grid)} ({shlex.join(flags)}): {exc}") from None
        runs.setdefault(run.save, run)
    return list(runs.values())


def describe_plan(runs: list[PlannedRun], jobs: int, show_commands: bool) -> str:
    """What the sweep will run, resume and skip: printed before anything starts."""
    states = [run.state for run in runs]
    counts = ", ".join(f"{states.count(s)} {label}" for s, label in
                       (("new", "to run"), ("resume", "to resume"), ("finished", "finished (skipped)")))
    lines = [f"sweep: {len(runs)} runs: {counts}; {jobs} at a time"]
    for run, state in zip(runs, states):
        lines.append(f"  {'skip' if state == 'finished' else state:7} {run.save}")
        if show_commands and state != "finished":
            lines.append("          resbench " + shlex.join(run.command[3:]))
    return "\n".join(lines)


def data_to_prepare(runs: list[PlannedRun]) -> list[str]:
    """One line per dataset the runs need that is not prepared yet: where it will come from."""
    from .data import missing_prepared_files
    from .datasets import RECIPES
    from .fetch import DOWNLOADS_DIR

    lines = []
    for name, root, mirror in dict.fromkeys((r.config.data_name, r.config.data_root, r.config.mirror) for r in runs):
        if not missing_prepared_files(name, root):
            continue
        source = RECIPES[name].source
        placed = Path(root) / DOWNLOADS_DIR / source.filename
        origin = (f"the archive already in {placed}" if placed.is_file() else
                  f"{source.filename} from --mirror {mirror}" if mirror else source.url)
        lines.append(f"  {name}: prepared in {Path(root) / name} by the first run that needs it, from {origin}")
    return lines


def done_iterations(run: PlannedRun) -> int:
    """The iteration of a started run's last evaluation (metrics.jsonl), 0 for a new one."""
    try:
        last = (run.save / "metrics.jsonl").read_text().splitlines()[-1]
        return int(json.loads(last)["iter"])
    except (OSError, IndexError, ValueError, KeyError, TypeError):
        return 0


def reference_minutes(run: PlannedRun) -> float | None:
    """What the run's remaining iterations took the reference on its GPU (its published wall time,
    scaled by images to train); None for a configuration the reference did not run."""
    cfg = run.config
    precision = "fp32" if canonical("mixed_precision", cfg.mixed_precision) == "fp32" else "fp16"
    row = reference_lookup().get((cfg.data_name, cfg.resnet_depth, cfg.resnet_width, precision))
    if row is None:
        return None
    return row.wall_min * (cfg.optim_ni - done_iterations(run)) * cfg.batch_size / (48_000 * 256)


def time_estimate(runs: list[PlannedRun], jobs: int) -> str:
    """The reference's time for the same work, the one estimate that needs no measurement here."""
    minutes = [reference_minutes(run) for run in runs]
    known = [m for m in minutes if m is not None]
    if not known:
        return ("time: the reference has no wall times for these configurations; measure this machine's speed "
                "with `resbench bench --resnet_depth D --batch_size B` (images/s)")
    unknown = f" ({len(minutes) - len(known)} runs the reference did not make are not counted)" if len(known) < len(
        minutes) else ""
    return (f"time: the same iterations took the reference {clock(sum(known) * 60)} on one GeForce RTX 3090 "
            f"(its published wall times, scaled to these runs){unknown}; a CPU takes many times longer, and "
            f"--jobs {jobs} runs share one device. This machine's speed: `resbench bench --resnet_depth D` (images/s)")


# ---------------------------------------------------------------- running

def child_env() -> dict[str, str]:
    """The environment of a train subprocess: it must import this same resbench, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


RUNNING: set[subprocess.Popen] = set()  # the train subprocesses running now


def execute(run: PlannedRun) -> str | None:
    """Train one run, its output appended to <save>/stdout.log; the reason it failed, or None."""
    try:
        run.save.mkdir(parents=True, exist_ok=True)
        with open(run.save / "stdout.log", "a") as log:
            child = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, env=child_env())
            RUNNING.add(child)
            try:
                code = child.wait()
            finally:
                RUNNING.discard(child)
    except OSError as exc:  # e.g. a file where the run's folder goes: that run fails, the others go on
        return f"cannot write {run.save}: {exc.strerror or exc}"
    if code != 0:
        return f"exit status {code}"
    return None if run.state == "finished" else "no summary.json written"


def final_figures(run: PlannedRun) -> str:
    """A finished run's table figures and wall time, from its summary.json."""
    try:
        summary = json.loads((run.save / "summary.json").read_text())
        return (f"val/acc {summary['val_acc']:.4f}, tst/acc {summary['tst_acc']:.4f}, tst/nll {summary['tst_nll']:.4f}"
                f" (best at iteration {summary['best_iter']}), {clock(summary['wall_seconds'])}")
    except (OSError, ValueError, KeyError, TypeError):  # the trainer writes these; a hand-edited file may not
        return f"see {run.save / 'summary.json'}"


def execute_all(runs: list[PlannedRun], jobs: int) -> list[tuple[PlannedRun, str]]:
    """Run the runs `jobs` at a time, reporting each as it starts and ends; the failed ones with their reasons."""
    lock, started, done, failures = threading.Lock(), itertools.count(1), itertools.count(1), []

    def job(run: PlannedRun) -> None:
        with lock:
            print(f"[start {next(started)}/{len(runs)}] {run.save} ({run.state}; its output goes to "
                  f"{run.save / 'stdout.log'})", flush=True)
        reason = execute(run)
        with lock:
            status = f"finished: {final_figures(run)}" if reason is None else \
                f"FAILED ({reason}, see {run.save / 'stdout.log'})"
            print(f"[{next(done)}/{len(runs)}] {run.save}: {status}", flush=True)
            if reason is not None:
                failures.append((run, reason))

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        list(pool.map(job, runs))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see cli.stop_on_sigterm): start nothing new,
        pool.shutdown(wait=False, cancel_futures=True)
        for child in list(RUNNING):  # and let each running run save its state and stop
            child.send_signal(signal.SIGTERM)
        pool.shutdown(wait=True)
        raise
    pool.shutdown()
    return failures


def train_flags(remainder: list[str]) -> list[str]:
    """Train flags given after `--` (argparse keeps the separator in a REMAINDER argument)."""
    if remainder and remainder[0] != "--":
        raise ResbenchError(f"unexpected argument {remainder[0]!r}; put train flags after `--`")
    return remainder[1:]


def run_sweep(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise ResbenchError("--jobs must be at least 1")
    source = "seed grid" if args.grid == "seed" else f"grid {args.grid}"
    # Runs at once share the cores: each gets its share, not every core (unless the flags say otherwise).
    threads = cpus.threads_per_job(args.jobs) if args.jobs > 1 else None
    runs = plan_runs(load_grid(args.grid), args.runs_dir, train_flags(args.train_flags), source, threads)
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


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench sweep [--grid seed|FILE.toml] [--runs_dir DIR] [--jobs N] [--dry-run] [-- TRAIN FLAGS]`."""
    p = subparsers.add_parser(
        "sweep", help="train a grid of configurations (skips finished runs, resumes broken ones)",
        description="Train every configuration of a grid, each in <runs_dir>/<data_name>/<run name>. "
                    "Train flags after `--` are passed to every run, e.g. `-- --optim_ni 2000`.")
    p.add_argument("--grid", default="seed",
                   help="`seed`: the 26 published rows (docs/reference/seed-results.md, the tables this "
                        "project reproduces), or a TOML file with lists data_name, "
                        "resnet_depth, resnet_width, precision (fp32/fp16/bf16), seed and a [flags] table")
    p.add_argument("--runs_dir", type=Path, default=Path("runs"), help="where run folders go (default ./runs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at the same time on the one device, each with --threads cores/N")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the plan, the train commands, the datasets to download and a time estimate; "
                        "run nothing")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- followed by train flags for every run")
    p.set_defaults(func=run_sweep)
    return p
