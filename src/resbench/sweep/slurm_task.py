"""One task of a sweep's SLURM job array (`sweep.slurm`'s script ends in it): train the task's run as a
job step, its output appended to <save>/stdout.log, and requeue the task when a signal stopped the run
with its state saved.

In Python, not in the job script's shell, so that stdout.log is opened as every launcher opens it,
never through a planted link (`files.open_own_file`); a shell's `>>` would follow one.

    python -P -m resbench.sweep.slurm_task SAVE COMMAND...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from resbench.errors import printable
from resbench.files import open_own_file
from resbench.runs import schema
from resbench.sweep.cluster import STOPPED_BY_SIGNAL

FORWARDED = (signal.SIGTERM, signal.SIGINT)  # to the job step, should they reach the batch step too


def note(log: IO[bytes], line: str) -> None:
    log.write(f"resbench sweep: {line}\n".encode())
    log.flush()


def task_name() -> str:
    return f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"


def train_step(command: list[str], log: IO[bytes]) -> int:
    """`srun` the command as the job's one step, its output into `log`; its exit status. A signal that
    reaches this batch step (`scancel --batch`, the time limit) is passed on to the step, so that the
    trainer saves before the job ends."""
    step = subprocess.Popen(["srun", "--ntasks=1", *command], stdout=log, stderr=subprocess.STDOUT)
    for signum in FORWARDED:
        signal.signal(signum, lambda sig, frame: step.send_signal(sig))
    return step.wait()


def run_task(save: Path, command: list[str]) -> int:
    if (save / schema.SUMMARY).exists():
        print(f"resbench sweep: {printable(save)} has finished", flush=True)
        return 0
    try:
        save.mkdir(parents=True, exist_ok=True)
        log = open_own_file(save / schema.STDOUT, append=True)
    except OSError as exc:  # a link planted as stdout.log, a full disk: this file (SLURM's output) says so
        print(f"resbench sweep: cannot write {printable(save / schema.STDOUT)} ({exc.strerror or exc}); the run "
              "was not started", flush=True)
        return 2
    with log:
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        note(log, f"job {task_name()}, start {os.environ.get('SLURM_RESTART_COUNT', '0')}, {started}")
        status = train_step(command, log)
        if (save / schema.SUMMARY).exists():
            return 0
        if status == STOPPED_BY_SIGNAL:  # saved on SIGTERM (time limit or preemption): go again
            note(log, "stopped and saved; requeued")
            subprocess.run(["scontrol", "requeue", task_name()], stdout=log, stderr=subprocess.STDOUT)
            return 0
        note(log, f"the run failed with exit status {status}")
        return status


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m resbench.sweep.slurm_task SAVE COMMAND... (written by resbench sweep --launcher "
              "slurm)", file=sys.stderr)
        return 2
    return run_task(Path(argv[0]), argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
