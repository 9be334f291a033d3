"""One task of a sweep's SLURM job array (`sweep.slurm`'s job script ends in it): find the task's run in
the sweep's plan, train it as a job step, its output appended to <save>/stdout.log, and requeue the
task when a signal stopped the run with its state saved.

The task learns its run from SLURM's environment and the launch folder, nothing from the script's
text: the folder is $SLURM_SUBMIT_DIR (<runs_dir>/.launch, where sbatch was started), the plan there
(named by the task's argument, a plain file name; read with a bound, never through a link) holds the
folder the sweep was started in and each array task's run folder and command. In Python, not in the
job script's shell, so that stdout.log is opened as every launcher opens it, never through a planted
link (`files.open_own_file`); a shell's `>>` would follow one.

    SLURM_SUBMIT_DIR=... SLURM_ARRAY_TASK_ID=N python -P -m resbench.sweep.slurm_task plan-<digest>.json
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from resbench.console import printable
from resbench.errors import reason
from resbench.files import open_own_file, read_bounded
from resbench.runs import schema
from resbench.sweep.cluster import STOPPED_BY_SIGNAL
from resbench.sweep.plan import own_run_folder
from resbench.sweep.slurm import PLAN_FORMAT, PLAN_NAME

FORWARDED = (signal.SIGTERM, signal.SIGINT)  # to the job step, should they reach the batch step too
MAX_PLAN_BYTES = 64 << 20  # 10,000 runs (a sweep's most) of commands of several kilobytes


class PlanError(Exception):
    """The launch folder's plan cannot be read, or holds no run for this task: the task trains nothing."""


def note(log: IO[bytes], line: str) -> None:
    log.write(f"resbench sweep: {line}\n".encode())
    log.flush()


def say(line: str) -> None:
    """A line in SLURM's own output of the task (its --output), the only place before the run's stdout.log."""
    print(f"resbench sweep: {printable(line)}", flush=True)


def task_name() -> str:
    return f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"


def read_plan(folder: Path, name: str, task: str) -> tuple[Path, Path, list[str]]:
    """(the folder the sweep was started in, the run folder, the train command) of array task `task`."""
    if not PLAN_NAME.fullmatch(name):
        raise PlanError(f"{name!r} is not the name of a sweep's plan (plan-<digest>.json)")
    path = folder / name
    try:
        plan = json.loads(read_bounded(path, MAX_PLAN_BYTES, follow_links=False))
    except (OSError, ValueError, RecursionError) as exc:
        why = "a symbolic link" if isinstance(exc, OSError) and exc.errno == errno.ELOOP else reason(exc)
        raise PlanError(f"cannot read {path} ({why})") from None
    tasks = plan.get("tasks") if isinstance(plan, dict) and plan.get("format") == PLAN_FORMAT else None
    if not isinstance(tasks, list) or not isinstance(plan.get("workdir"), str):
        raise PlanError(f"{path} is no plan of this resbench (format {PLAN_FORMAT})")
    if not task.isdigit() or int(task) >= len(tasks):
        raise PlanError(f"{path} has no run for array task {task}")
    entry = tasks[int(task)]
    if not (isinstance(entry, dict) and isinstance(entry.get("save"), str) and entry["save"]
            and isinstance(entry.get("command"), list) and entry["command"]
            and all(isinstance(part, str) for part in entry["command"])):
        raise PlanError(f"{path}: array task {task} has no run folder and command")
    return Path(plan["workdir"]), Path(entry["save"]), entry["command"]


def train_step(command: list[str], log: IO[bytes]) -> int:
    """`srun` the command as the job's one step, its output into `log`; its exit status. A signal that
    reaches this batch step (`scancel --batch`, the time limit) is passed on to the step, so that the
    trainer saves before the job ends. The step imports nothing from the folder it runs in (torchrun's
    workers included)."""
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    step = subprocess.Popen(["srun", "--ntasks=1", *command], stdout=log, stderr=subprocess.STDOUT, env=env)
    for signum in FORWARDED:
        signal.signal(signum, lambda sig, frame: step.send_signal(sig))
    return step.wait()


def run_task(save: Path, command: list[str]) -> int:
    if (save / schema.SUMMARY).exists():
        say(f"{save} has finished")
        return 0
    try:
        own_run_folder(save)
        log = open_own_file(save / schema.STDOUT, append=True)
    except OSError as exc:  # a link planted as stdout.log or as the run folder, a full disk: this output says so
        say(f"cannot write {exc.filename or save / schema.STDOUT} ({reason(exc)}); the run was not started")
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
    folder, task = os.environ.get("SLURM_SUBMIT_DIR"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if not folder or task is None or len(argv) != 1:
        print("usage: SLURM_SUBMIT_DIR=... SLURM_ARRAY_TASK_ID=N python -m resbench.sweep.slurm_task PLAN: a task of "
              "the job array `resbench sweep --launcher slurm` submits", file=sys.stderr)
        return 2
    try:
        workdir, save, command = read_plan(Path(folder), argv[0], task)
        os.chdir(workdir)
    except PlanError as exc:
        say(f"{exc}; the run was not started")
        return 2
    except OSError as exc:
        say(f"cannot enter {exc.filename}, the folder the sweep was started in ({reason(exc)}); the run was not "
            "started")
        return 2
    return run_task(save, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
