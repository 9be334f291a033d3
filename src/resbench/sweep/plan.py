"""A sweep's plan: one `PlannedRun` per configuration, its folder derived from its settings, checked
as `resbench train` would check it, and what the plan needs (datasets to fetch, time).

The folder name is derived from the configuration (`default_run_name`), so that a sweep run again
after an interruption finds its runs: finished folders hold summary.json, half-done ones resume.
Each run is a `python -P -m resbench train` command, so that it never imports from the folder the
sweep was started in (`-m` alone would put it first on the import path, and a `torch.py` there
would run).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from resbench.console import clock
from resbench.errors import ResbenchError
from resbench.results.reference import reference_lookup
from resbench.runs import schema
from resbench.runs.reader import config_from_args, last_iteration, read_summary
from resbench.runs.schema import RunFolderError
from resbench.settings.config import TrainConfig, canonical, run_folder_of
from resbench.settings.flags import parse_train_flags
from resbench.train.checks import check_official_data, validate_config

# The folder that holds this resbench package, first on a run's PYTHONPATH: every run imports the
# resbench that planned it.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Train flags a sweep sets itself: each run's folder is derived from its settings, below --runs_dir.
SWEEP_OWNED_FLAGS = ("save", "resume")
# How a run is started so that the current folder is not on its import path: `-P` (Python 3.11+),
# or before that a command that drops the path's first entry (the current folder) before importing.
CHILD_PYTHON_SAFE_PATH = [sys.executable, "-P", "-m", "resbench"]
CHILD_PYTHON_NO_CWD = [sys.executable, "-c",
                       "import sys; del sys.path[0]; from resbench.__main__ import run; sys.exit(run())"]
CHILD_PYTHON = CHILD_PYTHON_SAFE_PATH if sys.version_info >= (3, 11) else CHILD_PYTHON_NO_CWD


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the sweep: its folder, the train flags (without --save) and their settings."""

    save: Path
    flags: tuple[str, ...]
    config: TrainConfig = field(compare=False)

    @property
    def state(self) -> str:
        """'finished' (skipped), 'resume' (folder exists, no summary yet) or 'new'."""
        if (self.save / schema.SUMMARY).exists():
            return "finished"
        return "resume" if self.save.exists() else "new"

    @property
    def train_args(self) -> list[str]:
        return ["train", *self.flags, "--save", str(self.save)]

    @property
    def command(self) -> list[str]:
        return [*CHILD_PYTHON, *self.train_args]


def plan_run(runs_dir: Path, flags: list[str], threads: int | None = None, check: bool = True) -> PlannedRun:
    """A train command in its folder <runs_dir>/<data_name>/<run name>, checked as `resbench train`
    would check it; `--threads threads` is added unless the flags set the threads themselves.

    Checking at planning time makes a bad grid fail at once (and under --dry_run), not once per
    run after its folder was created.
    """
    args = parse_train_flags(flags)
    if owned := [f"--{name}" for name in SWEEP_OWNED_FLAGS if getattr(args, name, None) is not None]:
        raise ResbenchError(f"{', '.join(owned)} cannot be a flag of a sweep: each run gets its own folder "
                            "<runs_dir>/<data_name>/<run name>; set --runs_dir instead")
    if threads is not None and not hasattr(args, "threads"):
        flags, args.threads = [*flags, "--threads", str(threads)], threads
    config = config_from_args(args)
    if check:  # (the device and memory checks load torch: `--status` reads folders and needs none of them)
        validate_config(config)
        check_official_data(config)
    return PlannedRun(run_folder_of(dataclasses.replace(config, save=None), Path(runs_dir)), tuple(flags), config)


def check_runs_dir(runs_dir: Path) -> None:
    """Refuse a --runs_dir below a file, which every run would only discover when creating its folder."""
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResbenchError(f"--runs_dir {runs_dir} is not a folder ({existing} is a file); name a folder")


def plan_runs(grid: list[list[str]], runs_dir: Path, extra_flags: list[str], source: str,
              threads: int | None = None, check: bool = True) -> list[PlannedRun]:
    """Each grid point with its run folder; points that map to the same folder run once.

    A point that `resbench train` would refuse stops the plan with an error naming `source` and the point.
    """
    check_runs_dir(Path(runs_dir))
    runs: dict[Path, PlannedRun] = {}
    for number, point in enumerate(grid, 1):
        flags = (*point, *extra_flags)
        try:
            run = plan_run(runs_dir, list(flags), threads, check)
        except ResbenchError as exc:
            raise ResbenchError(f"{source}, run {number} of {len(grid)} ({shlex.join(flags)}): {exc}") from None
        runs.setdefault(run.save, run)
    return list(runs.values())


def describe_plan(runs: list[PlannedRun], jobs: int, show_commands: bool, launcher: str = "local") -> str:
    """What the sweep will run, resume and skip: printed before anything starts."""
    states = [run.state for run in runs]
    counts = ", ".join(f"{states.count(s)} {label}" for s, label in
                       (("new", "to run"), ("resume", "to resume"), ("finished", "finished (skipped)")))
    how = {"local": f"{jobs} at a time", "slurm": "as one SLURM job array", "ray": "as Ray tasks"}[launcher]
    lines = [f"sweep: {len(runs)} runs: {counts}; {how}"]
    for run, state in zip(runs, states):
        lines.append(f"  {'skip' if state == 'finished' else state:7} {run.save}")
        if show_commands and state != "finished":
            lines.append("          resbench " + shlex.join(run.train_args))
    return "\n".join(lines)


def data_to_prepare(runs: list[PlannedRun]) -> list[str]:
    """One line per dataset the runs need that is not prepared yet: where it will come from."""
    from resbench.data.fetch.prepare import archive_origin
    from resbench.data.prepared import missing_prepared_files
    from resbench.data.recipes import RECIPES

    lines = []
    for name, root, mirror in dict.fromkeys((r.config.data_name, r.config.data_root, r.config.mirror) for r in runs):
        if not missing_prepared_files(name, root):
            continue
        if name not in RECIPES:  # an imported set: no archive to fetch it from; its runs will say so
            lines.append(f"  {name}: not prepared in {Path(root) / name} and nothing to fetch it from: "
                         f"`resbench data import {name} SRC --data_root {root}` first")
            continue
        origin = archive_origin(name, root, mirror)
        lines.append(f"  {name}: prepared in {Path(root) / name} by the first run that needs it, from {origin}")
    return lines


def done_iterations(run: PlannedRun) -> int:
    """The iteration of a started run's last evaluation (metrics.jsonl), 0 for a new one."""
    return last_iteration(run.save)


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


def final_figures(run: PlannedRun) -> str:
    """A finished run's table figures and wall time, from its summary.json."""
    try:
        summary = read_summary(run.save)
        return (f"val/acc {summary['best_val_acc']:.4f}, tst/acc {summary['tst_acc']:.4f}, "
                f"tst/nll {summary['tst_nll']:.4f} (best at iteration {summary['best_iter']}), "
                f"{clock(summary['wall_seconds'])}")
    except (RunFolderError, KeyError, TypeError, ValueError):  # the trainer writes these; a hand-edited file may not
        return f"see {run.save / schema.SUMMARY}"
