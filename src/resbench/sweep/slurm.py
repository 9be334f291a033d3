"""`resbench sweep --launcher slurm`: the sweep's runs as one SLURM job array, a task per run folder.

sbatch directly rather than submitit: nothing is pickled between the login node and the compute
nodes, no Python package is needed on either side beyond resbench itself, and `--dry_run` prints
exactly what is submitted. Each task runs the very command the local sweep runs (`resbench train
... --save <folder>`, as a job step, through `sweep.slurm_task`), so what is finished is skipped and
what is half done resumes. Before the time limit, and on preemption (`scancel --signal=TERM`), the
job step gets SIGTERM; the trainer saves last.pt and exits with status 130, and the task requeues
itself (`scontrol requeue`), to resume from there: a 48,000-iteration run survives any number of
stops. SLURM holds a requeued job for about two minutes (its BeginTime) before it may start again.

Nothing a user passes or plants becomes script text or another option. The job script is one
constant text (`JOB_SCRIPT`, the same for every sweep). sbatch is started in <runs_dir>/.launch/,
which becomes the job's working folder and its SLURM_SUBMIT_DIR; there each task reads its run folder
and command from the sweep's plan (`plan-<digest>.json`, named after its content, so that `--dry_run`
shows the very command line), with a bounded reader that follows no link (`sweep.slurm_task`).
sbatch's options are its argv, one element each and no shell: the sweep's own, then the user's
`--slurm` options, whose keys must be sbatch's long option names other than the sweep's and whose
values may hold no control character, quote or backslash. (sbatch's parser of `#SBATCH` lines reads
a backslash inside quotes as an escape, so no quoting made a value safe there.) SLURM expands its
file-name patterns over the whole output path, the runs folder's part too: a `%` there is escaped,
and a backslash (which turns the expansion off, and is then dropped) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from resbench.console import printable, say
from resbench.errors import ResbenchError
from resbench.files import UnsafeFileError, own_folder, replace_atomically
from resbench.sweep.cluster import LAUNCH_DIR, mark_submitted
from resbench.sweep.plan import PACKAGE_ROOT, PlannedRun, child_python

STOP_BEFORE_LIMIT_S = 120  # SIGTERM to the job step this long before the time limit: time to save last.pt
SLURM_OUTPUT = "%A_%a.out"  # SLURM's own output of each task, in <runs_dir>/.launch/
JOB_NAME = "resbench-sweep"
SCRIPT_NAME = "job.sbatch"
PLAN_FORMAT = 1
PLAN_NAME = re.compile(r"plan-[0-9a-f]{16}\.json")  # what a task accepts as its plan's name: data, never a path
# The job script of every sweep. A plain constant (tests/sweep/test_launchers.py checks that it is one):
# what differs between sweeps travels as sbatch's argv (the script's arguments) and in the plan.
JOB_SCRIPT = """\
#!/bin/bash
# The job script of `resbench sweep --launcher slurm`: this same text for every sweep, nothing of the
# sweep's in it. sbatch runs it as `job.sbatch PACKAGE_ROOT PYTHON ARGS...` in <runs_dir>/.launch/ (the
# job's working folder and $SLURM_SUBMIT_DIR): the resbench that submitted it goes first on the import
# path, and Python starts `resbench.sweep.slurm_task PLAN`, which reads its array task's run folder and
# command from the plan beside this file and trains the run as a job step. To resume a sweep, run the
# same `resbench sweep` command again.
set -eu
export PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}"
shift
exec "$@"
"""
# The long options of sbatch(1), SLURM 22.05 to 24.11: a `--slurm KEY=VALUE` names one of them.
SBATCH_OPTIONS = frozenset("""
    account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
    container-id contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot
    dependency distribution error exclude exclusive export export-file extra extra-node-info get-user-env gid
    gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags help hint hold ignore-pbs
    input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu
    mem-per-gpu mincpus network nice no-kill no-requeue nodefile nodelist nodes ntasks ntasks-per-core
    ntasks-per-gpu ntasks-per-node ntasks-per-socket oom-kill-step open-mode output overcommit oversubscribe
    parsable partition power prefer priority profile propagate qos quiet reboot requeue reservation resv-ports
    segment signal sockets-per-node spread-job switches test-only thread-spec threads-per-core time time-min
    tmp tres-bind tres-per-task uid usage use-min-nodes verbose version wait wait-all-nodes wckey wrap
    """.split())
LOGS_REASON = (f"SLURM's own output goes to <runs_dir>/{LAUNCH_DIR}/{SLURM_OUTPUT}, appended across requeues, and each "
               "run's to its stdout.log")
REQUEUE_REASON = "a task stopped by a signal requeues itself, to resume from last.pt"
SUBMIT_REASON = "the sweep submits its own script, reads the job id sbatch answers and returns"
# sbatch options the launcher sets itself, and why: one `--slurm` of them is refused with its reason.
OWNED_OPTIONS = {
    "array": "one array task per run folder that is not finished",
    "output": LOGS_REASON, "error": LOGS_REASON, "open-mode": LOGS_REASON,
    "chdir": f"each task starts in <runs_dir>/{LAUNCH_DIR}, where it reads its run, and trains it in the folder "
             "the sweep was started in",
    "job-name": f"its tasks are named {JOB_NAME}, which `squeue --name {JOB_NAME}` lists",
    "requeue": REQUEUE_REASON, "no-requeue": REQUEUE_REASON,
    "signal": f"SIGTERM {STOP_BEFORE_LIMIT_S} s before the time limit makes each run save last.pt; "
              "set how early with --stop_before_limit_s",
    "parsable": SUBMIT_REASON, "wrap": SUBMIT_REASON, "test-only": SUBMIT_REASON, "wait": SUBMIT_REASON,
    "help": SUBMIT_REASON, "usage": SUBMIT_REASON, "version": SUBMIT_REASON,
}
# sbatch's input variables for the options above: they would override the sweep's own options.
OWNED_VARIABLES = ("SBATCH_ARRAY_INX", "SBATCH_ERROR", "SBATCH_JOB_NAME", "SBATCH_NO_REQUEUE", "SBATCH_OPEN_MODE",
                   "SBATCH_OUTPUT", "SBATCH_REQUEUE", "SBATCH_SIGNAL", "SBATCH_WAIT")
ANOTHER_OPTION = re.compile(r"(?:^|\s)--?[A-Za-z]")  # `partition=debug --output=...`: two options in one flag
UNSAFE_VALUE = re.compile(r"[\"'\\]")
MAX_VALUE = 4096  # characters of one --slurm value (a node list, a long comment)


def slurm_options(pairs: list[str]) -> dict[str, str | None]:
    """`--slurm KEY=VALUE` pairs as sbatch options (`partition=gpu`, `time=48:00:00`, `gres=gpu:1`), one per
    flag; `--slurm KEY` alone for a switch (`exclusive`, `hold`), None as its value."""
    options: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("_", "-")
        if sep and not value:
            raise ResbenchError(f"--slurm {printable(pair)}: expected KEY=VALUE (or KEY alone for a switch), one "
                                "sbatch option per flag, e.g. --slurm partition=gpu --slurm time=48:00:00")
        if key not in SBATCH_OPTIONS:
            raise ResbenchError(f"--slurm {printable(key)}: not an sbatch option (see `man sbatch`: its long "
                                "options, without the dashes, e.g. partition, time, gres, cpus-per-task, mem)")
        if key in OWNED_OPTIONS:
            raise ResbenchError(f"--slurm {key}: the sweep sets --{key} itself ({OWNED_OPTIONS[key]})")
        options[key] = checked_value(key, value) if sep else None
    return options


def checked_value(key: str, value: str) -> str:
    """An sbatch option's value as it may go to sbatch: one line, one option, no quote or backslash, short
    (one argument of 128 KiB would make the system refuse to start sbatch at all)."""
    if len(value) > MAX_VALUE:
        raise ResbenchError(f"--slurm {key}: its value is {len(value):,} characters long; sbatch options take at "
                            f"most {MAX_VALUE:,} here")
    if not value.isprintable():
        raise ResbenchError(f"--slurm {key}: its value holds a newline or another control character "
                            f"({printable(value)}); give the value on one line")
    if UNSAFE_VALUE.search(value):
        raise ResbenchError(f"--slurm {key}={printable(value)}: a quote or a backslash, which no sbatch option "
                            "needs; give the value without them")
    if ANOTHER_OPTION.search(value):
        raise ResbenchError(f"--slurm {key}={printable(value)}: one sbatch option per --slurm; repeat the flag "
                            "for each (--slurm partition=debug --slurm time=1:00:00)")
    return value


def output_pattern(launch: Path) -> str:
    """The --output of the tasks: <runs_dir>/.launch/%A_%a.out, its folder's `%` escaped for SLURM's patterns."""
    text = str(launch)
    if "\\" in text:
        raise ResbenchError(f"the runs folder, {printable(text)}, holds a backslash, which SLURM reads in an output "
                            "path as 'expand no pattern' and drops (its tasks could not open their output); rename it")
    return text.replace("%", "%%") + "/" + SLURM_OUTPUT


def job_plan(runs: list[PlannedRun]) -> tuple[str, bytes]:
    """The plan's name and text: the folder the runs' paths are relative to, and each array task's run
    folder and command (a torchrun of its processes where a run has several: the script stays the same).
    Named after its content, so that a dry run names the same file."""
    plan = {"format": PLAN_FORMAT, "workdir": os.getcwd(),
            "tasks": [{"save": str(run.save), "command": run.command} for run in runs]}
    text = json.dumps(plan, indent=1).encode() + b"\n"
    return f"plan-{hashlib.sha256(text).hexdigest()[:16]}.json", text


def sbatch_argv(runs: list[PlannedRun], options: dict[str, str | None], launch: Path, plan_name: str,
                gpus_per_run: int, stop_before_limit_s: int = STOP_BEFORE_LIMIT_S) -> list[str]:
    """sbatch's command line, run in `launch`: the sweep's options, the user's, then the job script and its
    arguments (the resbench to import, and the task's command naming its plan). Each task asks for
    `gpus_per_run` GPUs, none where the runs train on the CPU (--gpus_per_run N CPU processes)."""
    asked = {"array": f"0-{len(runs) - 1}", "output": output_pattern(launch), "open-mode": "append",
             "job-name": JOB_NAME, "signal": f"TERM@{stop_before_limit_s}", "requeue": None, **options}
    on_cpus = all(run.config.device == "cpu" for run in runs)
    if gpus_per_run and not on_cpus and "gres" not in asked and "gpus" not in asked:
        asked["gres"] = f"gpu:{gpus_per_run}"
    flags = [f"--{key}" if value is None else f"--{key}={value}" for key, value in asked.items()]
    return ["sbatch", "--parsable", *flags, SCRIPT_NAME, str(PACKAGE_ROOT),
            *child_python("resbench.sweep.slurm_task"), plan_name]


def describe_submission(argv: list[str], launch: Path) -> str:
    """What `--dry_run` prints: the command line sbatch gets and the script, exactly as submitted."""
    return (f"in {printable(launch)}, beside the plan (each task's run folder and command), sbatch would run:\n"
            f"{printable(shlex.join(argv))}\n{SCRIPT_NAME}:\n{JOB_SCRIPT}")


def sbatch_environment() -> tuple[dict[str, str], list[str]]:
    """sbatch's environment without the input variables that would override the sweep's own options,
    and the names of those that were set."""
    dropped = [name for name in OWNED_VARIABLES if name in os.environ]
    return {k: v for k, v in os.environ.items() if k not in OWNED_VARIABLES}, dropped


class Submission(NamedTuple):
    """What `--launcher slurm` submits: sbatch's command line, run in `launch`, and the plan it names."""

    argv: list[str]
    plan_name: str
    plan: bytes
    launch: Path


def own_launch_folder(runs_dir: Path, create: bool = True) -> Path:
    """<runs_dir>/.launch, created if missing (unless not `create`: a dry run); a link or a file planted there
    is refused before anything is printed or submitted (the script and SLURM's output would go where it leads).

    SLURM's own output (`SLURM_OUTPUT`) is opened there by slurmstepd, which follows links: whoever may add a
    name to the folder could plant `<job>_<task>.out` as a link before the task starts, job ids being
    predictable. So the folder is the user's and closed to others' writes (`close_to_others`)."""
    try:
        folder = own_folder(Path(runs_dir).resolve(), LAUNCH_DIR, create)
    except UnsafeFileError as exc:
        raise ResbenchError(f"{printable(exc.filename)}: {exc.strerror}; the sweep writes its job scripts there: "
                            "remove it") from None
    if folder.is_dir():
        close_to_others(folder, tighten=create)
    return folder


def close_to_others(folder: Path, tighten: bool) -> None:
    """Refuse `folder` where another user owns it; where others may write in it (a group-shared runs folder
    made under umask 002), take that right away (`tighten`: not in a dry run, which changes nothing, but
    says so)."""
    info = os.lstat(folder)
    if info.st_uid != os.geteuid():
        raise ResbenchError(f"{printable(folder)} belongs to another user (uid {info.st_uid}), who could plant links "
                            "where SLURM writes this sweep's output; use a --runs_dir of your own")
    if info.st_mode & 0o022:
        if not tighten:
            say(f"sweep: {printable(folder)} is writable by others; submitting makes it writable by you alone")
            return
        os.chmod(folder, info.st_mode & 0o7755)


def submit(runs: list[PlannedRun], submission: Submission, runs_dir: Path) -> str:
    """Write the job script and the plan into <runs_dir>/.launch and run sbatch there; the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ResbenchError("--launcher slurm needs sbatch on PATH (SLURM's client commands): run the sweep on a "
                            "login node of the cluster, or use --launcher local")
    folder = own_launch_folder(runs_dir)
    replace_atomically(folder / submission.plan_name, lambda f: f.write(submission.plan))
    replace_atomically(folder / SCRIPT_NAME, lambda f: f.write(JOB_SCRIPT.encode()))
    env, dropped = sbatch_environment()
    if dropped:
        say(f"sweep: not passing {', '.join(dropped)} to sbatch: the sweep sets those options itself")
    proc = subprocess.run([sbatch, *submission.argv[1:]], cwd=folder, capture_output=True, text=True, env=env,
                          errors="backslashreplace")
    if proc.returncode != 0:
        reason = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise ResbenchError(f"sbatch refused the job array ({reason}); check the --slurm options. "
                            f"Its script and plan are in {folder}")
    job = proc.stdout.strip().split(";")[0]
    for i, run in enumerate(runs):
        mark_submitted(run, "slurm", f"{job}_{i}")
    return job
