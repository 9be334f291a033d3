"""What the cluster launchers share: the checks and the record before a run is handed to a scheduler
(`slurm`, `ray_cluster`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from resbench.console import printable
from resbench.errors import ResbenchError
from resbench.files import UnsafeFileError, check_writable_in_place, replace_atomically
from resbench.runs import schema
from resbench.runs.reader import read_json
from resbench.runs.schema import RunFolderError
from resbench.sweep.plan import PlannedRun, own_run_folder

LAUNCH_DIR = ".launch"  # below --runs_dir: the job scripts and the scheduler's own output
STOPPED_BY_SIGNAL = 130  # `resbench train`'s exit status once it has saved its state on a signal


def check_outputs(runs: list[PlannedRun]) -> None:
    """Refuse before anything starts where a level of a run's folder below --runs_dir is a link, or its
    stdout.log is a link, a hard link or not a file, which its launcher would refuse to write through once
    the run's turn came (on a cluster, hours later)."""
    for run in runs:
        try:
            own_run_folder(run.save, create=False)
            check_writable_in_place(run.save / schema.STDOUT)
        except UnsafeFileError as exc:
            raise ResbenchError(f"{printable(exc.filename)}: {exc.strerror}; remove it, then start the sweep "
                                "again") from None


def mark_submitted(run: PlannedRun, launcher: str, job: str) -> None:
    """Record in the run's folder that it was handed to a scheduler: `--status` then calls it queued."""
    own_run_folder(run.save)
    record = {"launcher": launcher, "job": job, "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    replace_atomically(run.save / schema.LAUNCH, lambda f: f.write(json.dumps(record).encode() + b"\n"))


def submitted(run: PlannedRun) -> str | None:
    """`slurm job 41_3`, where the run was handed to a scheduler; None otherwise."""
    try:
        record = read_json(run.save / schema.LAUNCH)
    except RunFolderError:
        return None
    return f"{record.get('launcher')} job {record.get('job')}" if isinstance(record, dict) else None
