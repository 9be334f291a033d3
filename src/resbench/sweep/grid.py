"""`resbench sweep`: train every configuration of a grid, skipping finished runs and resuming broken ones.

Each run is a `python -P -m resbench train ... --save <runs_dir>/<data_name>/<run name>` subprocess, so
a crash or out-of-memory in one run cannot take the others down, several can share one device
(`--jobs`), and re-running the same sweep after an interruption continues where it stopped: the
folder name is derived from the configuration, finished folders hold summary.json, and the
trainer resumes a folder it finds half done.

A run never imports from the folder the sweep was started in (`python -m` would put it first on
the import path, so a `torch.py` there would run), and it stops, saving its state, when the
sweep dies, even by SIGKILL (`stop_with_parent`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from resbench.settings.config import TrainConfig, canonical, default_run_name, validate_config
from resbench.settings.flags import config_from_args, file_value, parse_toml, parse_train_flags, read_settings_text
from resbench.files import open_own_file
from resbench.runs import schema
from resbench.runs.reader import last_iteration, read_summary
from resbench.runs.schema import RunFolderError
from resbench.errors import ResbenchError, reason
from resbench.runtime.progress import clock
from resbench.results.reference import reference_lookup, reference_rows, reference_weight_decays

# A grid file's lists: `precision` (fp32/fp16/bf16, as the seed names its rows) and any train setting.
GRID_AXES = ("data_name", "resnet_depth", "resnet_width", "precision", "seed",
             *(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("data_name", "resnet_depth",
                                                                                 "resnet_width", "seed", "save")))
READY_GRIDS = {"seed": "the 26 rows of seed-results.md",
               "wd": "the reference's weight-decay sweep: the 26 rows at each weight decay it ran (104 runs)"}
# fp16 as the seed means it: mixed precision, which the trainer runs as bf16 where fp16 is unsupported.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Train flags a sweep sets itself: each run's folder is derived from its settings, below --runs_dir.
SWEEP_OWNED_FLAGS = ("save", "resume")
# How a run is started so that the current folder is not on its import path: `-P` (Python 3.11+),
# or before that a command that drops the path's first entry (the current folder) before importing.
CHILD_PYTHON_SAFE_PATH = [sys.executable, "-P", "-m", "resbench"]
CHILD_PYTHON_NO_CWD = [sys.executable, "-c",
                       "import sys; del sys.path[0]; from resbench.__main__ import run; sys.exit(run())"]
CHILD_PYTHON = CHILD_PYTHON_SAFE_PATH if sys.version_info >= (3, 11) else CHILD_PYTHON_NO_CWD
PARENT_VARIABLE = "RESBENCH_SWEEP_PID"  # set in a run's environment: the sweep it must not outlive
# The most runs one sweep plans: every run is checked before the first starts, so a grid file of a
# few lines whose product is 10**9 runs is refused from its axes' lengths, never enumerated.
MAX_RUNS = 10_000


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


# ---------------------------------------------------------------- grids

def seed_grid() -> list[list[str]]:
    """The 26 rows of seed-results.md, as train flags (trainer defaults give the seed's recipe)."""
    return [["--data_name", row.data_name, "--resnet_depth", str(row.depth), "--resnet_width", str(row.width),
             *schema.PRECISION_FLAGS[row.precision]] for row in reference_rows()]


def weight_decay_grid() -> list[list[str]]:
    """The reference's weight-decay sweep: every row of the seed grid at each weight decay it logged."""
    return [[*row, "--optim_weight_decay", f"{wd:g}"] for row in seed_grid() for wd in reference_weight_decays()]


def with_seeds(grid: list[list[str]], seeds: list[int] | None, source: str) -> list[list[str]]:
    """Each grid point once per seed of `--seeds` (a grid that sets seeds itself is refused: which would win?)."""
    if not seeds:
        return grid
    if any("--seed" in point for point in grid):
        raise ResbenchError(f"{source} sets seeds itself (a seed list or flag); drop it or --seeds")
    check_run_count(len(grid) * len(seeds), source)
    return [[*point, "--seed", str(seed)] for point in grid for seed in seeds]


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def check_run_count(count: int, source: str) -> None:
    if count > MAX_RUNS:
        raise ResbenchError(f"{source} has {count:,} runs, more than the {MAX_RUNS:,} one sweep plans; "
                            "split it into several grids")


def grid_value(key: str, value: object, path: Path) -> str:
    """One value of a grid axis or of its [flags] as a train flag's text: a list inside an axis or a
    table is refused (its text would become a setting, `data_root = [["a"]]` a folder named "['a']")."""
    try:
        return file_value(value)
    except TypeError as exc:
        raise ResbenchError(f"grid {path}: {key} holds {exc}; give a value, or for an axis a list of values") from None


def toml_grid(path: Path) -> list[list[str]]:
    """The cartesian product of a user grid file's axes, each with the `[flags]` table appended."""
    try:
        spec = parse_toml(read_settings_text(Path(path)))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOML's decode errors are ValueErrors
        raise ResbenchError(f"cannot read grid {path}: {reason(exc)}") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser recurses
        raise ResbenchError(f"cannot read grid {path}: its values are nested too deeply") from None
    fixed = spec.pop("flags", {})
    if not isinstance(fixed, dict):
        raise ResbenchError(f"grid {path}: flags must be a table: a [flags] line followed by name = value lines")
    unknown = set(spec) - set(GRID_AXES)
    if unknown:
        raise ResbenchError(f"grid {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                            "allowed: precision, any train setting (data_name, resnet_depth, seed, optim_lr, ...) "
                            "and a [flags] table")
    if "data_name" not in spec:
        raise ResbenchError(f"grid {path}: data_name is required")
    axes = {key: as_list(spec[key]) for key in GRID_AXES if key in spec}  # in GRID_AXES order
    if empty := [key for key, values in axes.items() if not values]:
        raise ResbenchError(f"grid {path}: {', '.join(empty)} is an empty list, so the grid has no runs")
    bad = [value for value in axes.get("precision", []) if not isinstance(value, str) or value not in schema.PRECISION_FLAGS]
    if bad:
        raise ResbenchError(f"grid {path}: precision must be one of {', '.join(schema.PRECISION_FLAGS)}, not {bad[0]!r}")
    check_run_count(math.prod(map(len, axes.values())), f"grid {path}")
    fixed_flags = [part for key, value in fixed.items() for part in (f"--{key}", grid_value(key, value, path))]
    texts = {key: values if key == "precision" else [grid_value(key, value, path) for value in values]
             for key, values in axes.items()}
    return [axis_flags(dict(zip(texts, values))) + fixed_flags for values in itertools.product(*texts.values())]


def axis_flags(point: dict) -> list[str]:
    """Train flags for one point of the grid (its values already as the flags' text)."""
    flags = []
    for key, value in point.items():
        flags += schema.PRECISION_FLAGS[value] if key == "precision" else [f"--{key}", value]
    return flags


def load_grid(grid: str) -> list[list[str]]:
    return {"seed": seed_grid, "wd": weight_decay_grid}.get(grid, lambda: toml_grid(Path(grid)))()


# ---------------------------------------------------------------- planning

def plan_run(runs_dir: Path, flags: list[str], threads: int | None = None, check: bool = True) -> PlannedRun:
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
    if check:  # (the device and memory checks load torch: `--status` reads folders and needs none of them)
        validate_config(config)
    return PlannedRun(Path(runs_dir) / config.data_name / default_run_name(config), tuple(flags), config)


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
    from resbench.data.tensors import missing_prepared_files
    from resbench.data.recipes import RECIPES
    from resbench.data.fetch.prepare import DOWNLOADS_DIR

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


# ---------------------------------------------------------------- running

def child_env() -> dict[str, str]:
    """The environment of a train subprocess: it must import this same resbench, installed or not,
    and know the sweep whose death must stop it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    env[PARENT_VARIABLE] = str(os.getpid())
    return env


PR_SET_PDEATHSIG = 1  # prctl(2)


def stop_with_parent() -> None:
    """In a run started by a sweep: get SIGTERM (and so save and stop) when the sweep dies.

    SIGTERM and Ctrl-C reach the runs through the sweep, but a SIGKILLed sweep forwards nothing;
    on Linux the kernel sends the signal (PR_SET_PDEATHSIG), elsewhere a thread watches the parent.
    A sweep that died before this ran is noticed at once.
    """
    sweep = os.environ.pop(PARENT_VARIABLE, None)
    if sweep is None or not sweep.isdigit():
        return
    linux = sys.platform.startswith("linux")
    if not (linux and ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0):
        threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True, name="resbench-parent").start()
    if os.getppid() != int(sweep) and not process_exists(int(sweep)):  # (a wrapper may stand in between)
        os.kill(os.getpid(), signal.SIGTERM)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def watch_parent(parent: int, interval: float = 1.0) -> None:
    """Send this process SIGTERM once its parent is no longer `parent` (it died: the child was re-parented)."""
    while os.getppid() == parent:
        threading.Event().wait(interval)
    os.kill(os.getpid(), signal.SIGTERM)


RUNNING: set[subprocess.Popen] = set()  # the train subprocesses running now


def execute(run: PlannedRun) -> str | None:
    """Train one run, its output appended to <save>/stdout.log; the reason it failed, or None."""
    try:
        run.save.mkdir(parents=True, exist_ok=True)
        with open_own_file(run.save / schema.STDOUT, append=True) as log:
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
        summary = read_summary(run.save)
        return (f"val/acc {summary['best_val_acc']:.4f}, tst/acc {summary['tst_acc']:.4f}, "
                f"tst/nll {summary['tst_nll']:.4f} (best at iteration {summary['best_iter']}), "
                f"{clock(summary['wall_seconds'])}")
    except (RunFolderError, KeyError, TypeError, ValueError):  # the trainer writes these; a hand-edited file may not
        return f"see {run.save / schema.SUMMARY}"


def execute_all(runs: list[PlannedRun], jobs: int) -> list[tuple[PlannedRun, str]]:
    """Run the runs `jobs` at a time, reporting each as it starts and ends; the failed ones with their reasons."""
    lock, started, done, failures = threading.Lock(), itertools.count(1), itertools.count(1), []

    def job(run: PlannedRun) -> None:
        with lock:
            print(f"[start {next(started)}/{len(runs)}] {run.save} ({run.state}; its output goes to "
                  f"{run.save / schema.STDOUT})", flush=True)
        reason = execute(run)
        with lock:
            status = f"finished: {final_figures(run)}" if reason is None else \
                f"FAILED ({reason}, see {run.save / schema.STDOUT})"
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
