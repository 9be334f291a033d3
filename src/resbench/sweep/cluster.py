"""What the cluster launchers share: the checks and the record before a run is handed to a scheduler
(`slurm`, `ray_cluster`)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from resbench.errors import ResbenchError, printable
from resbench.files import UnsafeFileError, check_writable_in_place, replace_atomically
from resbench.runs import schema
from resbench.runs.reader import read_json
from resbench.runs.schema import RunFolderError
from resbench.sweep.plan import PlannedRun

LAUNCH_DIR = ".launch"  # below --runs_dir: the job scripts and the scheduler's own output
STOPPED_BY_SIGNAL = 130  # `resbench train`'s exit status once it has saved its state on a signal


def launch_dir(runs_dir: Path) -> Path:
    return Path(runs_dir).resolve() / LAUNCH_DIR


def own_launch_dir(runs_dir: Path, create: bool = True) -> Path:
    """<runs_dir>/.launch, created if missing (unless not `create`: a dry run); a link planted there is
    refused (the job script and the scheduler's output would be written wherever it points)."""
    folder = launch_dir(runs_dir)
    if create and not folder.is_symlink():
        folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise ResbenchError(f"{printable(folder)} is a link or not a folder; the sweep writes its job scripts there "
                            "and never through a link: remove it")
    return folder


def check_outputs(runs: list[PlannedRun]) -> None:
    """Refuse before anything starts where a run's stdout.log is a link, a hard link or not a file, which
    its launcher would refuse to write through once the run's turn came (on a cluster, hours later)."""
    for run in runs:
        try:
            check_writable_in_place(run.save / schema.STDOUT)
        except UnsafeFileError as exc:
            raise ResbenchError(f"{printable(exc.filename)}: {exc.strerror}; remove it, then start the sweep "
                                "again") from None


def mark_submitted(run: PlannedRun, launcher: str, job: str) -> None:
    """Record in the run's folder that it was handed to a scheduler: `--status` then calls it queued."""
    run.save.mkdir(parents=True, exist_ok=True)
    record = {"launcher": launcher, "job": job, "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    replace_atomically(run.save / schema.LAUNCH, lambda f: f.write(json.dumps(record).encode() + b"\n"))


def submitted(run: PlannedRun) -> str | None:
    """`slurm job 41_3`, where the run was handed to a scheduler; None otherwise."""
    try:
        record = read_json(run.save / schema.LAUNCH)
    except RunFolderError:
        return None
    return f"{record.get('launcher')} job {record.get('job')}" if isinstance(record, dict) else None
