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

from resbench.console import clock, printable
from resbench.errors import ResbenchError
from resbench.files import own_folder
from resbench.results.reference import ReferenceRow, published_row
from resbench.runs import schema
from resbench.runs.reader import last_iteration, read_summary
from resbench.runs.schema import RunFolderError
from resbench.settings.config import TrainConfig, canonical, run_folder_of
from resbench.settings.flags import given_flags, parse_train_flags
from resbench.train.assemble import config_from
from resbench.train.checks import check_official_data, validate_config

# The folder that holds this resbench package, first on a run's PYTHONPATH: every run imports the
# resbench that planned it.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Train flags a sweep sets itself: each run's folder is derived from its settings, below --runs_dir.
SWEEP_OWNED_FLAGS = ("save", "resume")


def child_python(module: str, safe_path: bool = sys.version_info >= (3, 11)) -> list[str]:
    """How a child runs `module` (`resbench`: its `__main__`; otherwise its `main()`) so that the current
    folder is not on its import path: `-P` (Python 3.11+), or before that a command that drops the path's
    first entry (the current folder) before importing."""
    if safe_path:
        return [sys.executable, "-P", "-m", module]
    call = "from resbench.__main__ import run; sys.exit(run())" if module == "resbench" else \
        f"from {module} import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", f"import sys; del sys.path[0]; {call}"]


CHILD_PYTHON = child_python("resbench")


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the sweep: its folder, the train flags (without --save) and their settings,
    and the data-parallel processes it trains with (one per GPU; `--device cpu`: CPU processes, gloo)."""

    save: Path
    flags: tuple[str, ...]
    config: TrainConfig = field(compare=False)
    processes: int = 1

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
        """`resbench train ...`; on several processes under torchrun, one node, a free port of its own."""
        if self.processes == 1:
            return [*CHILD_PYTHON, *self.train_args]
        return [*child_python("torch.distributed.run"), "--standalone", "--nproc_per_node", str(self.processes),
                "-m", "resbench", *self.train_args]


def own_run_folder(save: Path, create: bool = True) -> Path:
    """A run's folder <runs_dir>/<data_name>/<run>, created if missing (unless not `create`), each level
    below --runs_dir checked to be a folder of its own: a link planted there would take the run's files
    wherever it leads (`files.own_folder`)."""
    return own_folder(save.parents[1], Path(*save.parts[-2:]), create)


def plan_run(runs_dir: Path, flags: list[str], threads: int | None = None, check: bool = True,
             processes: int = 1, here: bool = True) -> PlannedRun:
    """A train command in its folder <runs_dir>/<data_name>/<run name>, checked as `resbench train`
    would check it on `processes` processes (`here`: and on this machine's memory, where a local sweep
    trains it); `--threads threads` is added unless the flags set the threads themselves.

    Checking at planning time makes a bad grid fail at once (and under --dry_run), not once per
    run after its folder was created.
    """
    args = parse_train_flags(flags)
    if owned := [f"--{name}" for name in SWEEP_OWNED_FLAGS if getattr(args, name, None) is not None]:
        raise ResbenchError(f"{', '.join(owned)} cannot be a flag of a sweep: each run gets its own folder "
                            "<runs_dir>/<data_name>/<run name>; set --runs_dir instead")
    if threads is not None and not hasattr(args, "threads"):
        flags, args.threads = [*flags, "--threads", str(threads)], threads
    config = config_from(given_flags(args))
    if check:  # (the device and memory checks load torch: `--status` reads folders and needs none of them)
        check_official_data(config, validate_config(config, processes, check_memory=here))
    return PlannedRun(run_folder_of(dataclasses.replace(config, save=None), Path(runs_dir)), tuple(flags), config,
                      processes)


def check_runs_dir(runs_dir: Path) -> None:
    """Refuse a --runs_dir below a file, which every run would only discover when creating its folder."""
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResbenchError(f"--runs_dir {runs_dir} is not a folder ({existing} is a file); name a folder")


def plan_runs(grid: list[list[str]], runs_dir: Path, extra_flags: list[str], source: str,
              threads: int | None = None, check: bool = True, processes: int = 1,
              here: bool = True) -> list[PlannedRun]:
    """Each grid point with its run folder; points that map to the same folder run once.

    A point that `resbench train` would refuse stops the plan with an error naming `source` and the point.
    """
    check_runs_dir(Path(runs_dir))
    runs: dict[Path, PlannedRun] = {}
    for number, point in enumerate(grid, 1):
        flags = (*point, *extra_flags)
        try:
            run = plan_run(runs_dir, list(flags), threads, check, processes, here)
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
        lines.append(f"  {'skip' if state == 'finished' else state:7} {printable(run.save)}{devices_note(run)}")
        if show_commands and state != "finished":
            lines.append("          resbench " + printable(shlex.join(run.train_args)))
    return "\n".join(lines)


def devices_note(run: PlannedRun) -> str:
    """How a run's batch is spread where that is not one process with one BatchNorm batch, beside how the
    reference spread it where it trained the row on several GPUs."""
    cfg, row = run.config, reference_row(run)
    spread = (f"{run.processes} processes (torchrun)" if run.processes > 1 else "1 process") + (
        f" × {cfg.bn_groups} BatchNorm groups" if cfg.bn_groups > 1 else "")
    ours = cfg.batch_size // (run.processes * cfg.bn_groups)
    if row is not None and row.devices > 1:
        theirs = row.batch_size // row.devices
        return (f"  [the reference's {row.devices} GPUs as {spread}: {ours} images per BatchNorm, "
                + ("as there]" if ours == theirs else f"there {theirs}]"))
    return f"  [{spread}]" if run.processes > 1 or cfg.bn_groups > 1 else ""


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
            lines.append(f"  {name}: not prepared in {printable(Path(root) / name)} and nothing to fetch it from: "
                         f"`resbench data import {name} SRC --data_root {printable(root)}` first")
            continue
        origin = archive_origin(name, root, mirror)
        lines.append(f"  {name}: prepared in {printable(Path(root) / name)} by the first run that needs it, from "
                     f"{printable(origin)}")
    return lines


def done_iterations(run: PlannedRun) -> int:
    """The iteration of a started run's last evaluation (metrics.jsonl), 0 for a new one."""
    return last_iteration(run.save)


def reference_row(run: PlannedRun) -> ReferenceRow | None:
    """The published row of the run's configuration (dataset, depth, width, precision), if any."""
    cfg = run.config
    return published_row(cfg.data_name, cfg.resnet_depth, cfg.resnet_width,
                         canonical("mixed_precision", cfg.mixed_precision))


def reference_minutes(run: PlannedRun) -> float | None:
    """What the run's remaining iterations took the reference on its GPUs (its published wall time,
    scaled by images to train); None for a configuration the reference did not run."""
    row, cfg = reference_row(run), run.config
    return None if row is None else row.minutes_for(cfg.optim_ni - done_iterations(run), cfg.batch_size)


def time_estimate(runs: list[PlannedRun], jobs: int) -> str:
    """The reference's time for the same work, the one estimate that needs no measurement here."""
    minutes = [reference_minutes(run) for run in runs]
    known = [m for m in minutes if m is not None]
    devices = sorted({row.devices for run in runs if (row := reference_row(run)) is not None})
    if not known:
        return ("time: the reference has no wall times for these configurations; measure this machine's speed "
                "with `resbench bench --resnet_depth D --batch_size B` (images/s)")
    unknown = f" ({len(minutes) - len(known)} runs the reference did not make are not counted)" if len(known) < len(
        minutes) else ""
    gpus = "one GeForce RTX 3090" if devices == [1] else f"{'-'.join(map(str, devices))} GeForce RTX 3090 per run"
    return (f"time: the same iterations took the reference {clock(sum(known) * 60)} on {gpus} "
            f"(its published wall times, scaled to these runs){unknown}; a CPU takes many times longer, and "
            f"--jobs {jobs} runs share one device. This machine's speed: `resbench bench --resnet_depth D` (images/s)"
            + (", `resbench bench --grid imagenet` for the ImageNet rows" if devices != [1] else ""))


def final_figures(run: PlannedRun) -> str:
    """A finished run's table figures and wall time, from its summary.json."""
    try:
        summary = read_summary(run.save)
        return (f"val/acc {summary['best_val_acc']:.4f}, tst/acc {summary['tst_acc']:.4f}, "
                f"tst/nll {summary['tst_nll']:.4f} (best at iteration {printable(summary['best_iter'])}), "
                f"{clock(summary['wall_seconds'])}")
    except (RunFolderError, KeyError, TypeError, ValueError):  # the trainer writes these; a hand-edited file may not
        return f"see {printable(run.save / schema.SUMMARY)}"
