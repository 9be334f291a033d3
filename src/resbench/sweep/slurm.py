"""`resbench sweep --launcher slurm`: the sweep's runs as one SLURM job array, a task per run folder.

The script is written for `sbatch` directly rather than through submitit: it is a plain file a
user can read, keep, edit and resubmit, `--dry_run` prints exactly what is submitted, nothing is
pickled between the login node and the compute nodes, and no Python package is needed on either
side beyond resbench itself. Each task runs the very command the local sweep runs
(`resbench train ... --save <folder>`, as a job step, through `sweep.slurm_task`), so what is
finished is skipped and what is half done resumes. Before the time limit, and on preemption
(`scancel --signal=TERM`), the job step gets SIGTERM; the trainer saves last.pt and exits with
status 130, and the task requeues itself (`scontrol requeue`), to resume from there: a
48,000-iteration run survives any number of stops. SLURM holds a requeued job for about two
minutes (its BeginTime) before it may start again.

Everything that reaches the script is data. The user's sbatch options are checked against
sbatch's own option names, the ones the sweep sets itself are refused, and every value and path
is quoted: sbatch reads an `#SBATCH` line's argument with the shell's quotes (no backslash
escapes), so `shlex.quote` serves both the directives and the shell lines. What cannot be quoted
there, a newline or another control character, is refused, as is a backslash in the output path
(SLURM's file-name patterns read one as "expand nothing").
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from resbench.errors import ResbenchError, printable
from resbench.files import replace_atomically
from resbench.sweep.cluster import mark_submitted, own_launch_dir
from resbench.sweep.plan import CHILD_PYTHON, PACKAGE_ROOT, PlannedRun

STOP_BEFORE_LIMIT_S = 120  # SIGTERM to the job step this long before the time limit: time to save last.pt
SLURM_OUTPUT = "%A_%a.out"  # SLURM's own output of each task, in <runs_dir>/.launch/
JOB_NAME = "resbench-sweep"
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
LOGS_REASON = (f"SLURM's own output goes to <runs_dir>/.launch/{SLURM_OUTPUT}, appended across requeues, and each "
               "run's to its stdout.log")
REQUEUE_REASON = "a task stopped by a signal requeues itself, to resume from last.pt"
SUBMIT_REASON = "the sweep submits its own script and reads the job id sbatch answers"
# sbatch options the launcher sets itself, and why: one `--slurm` of them is refused with its reason.
OWNED_OPTIONS = {
    "array": "one array task per run folder that is not finished",
    "output": LOGS_REASON, "error": LOGS_REASON, "open-mode": LOGS_REASON,
    "chdir": "the tasks run in the folder the sweep was started in, where the run folders' paths point",
    "job-name": f"its tasks are named {JOB_NAME}, which `squeue --name {JOB_NAME}` lists",
    "requeue": REQUEUE_REASON, "no-requeue": REQUEUE_REASON,
    "signal": f"SIGTERM {STOP_BEFORE_LIMIT_S} s before the time limit makes each run save last.pt; "
              "set how early with --stop_before_limit_s",
    "parsable": SUBMIT_REASON, "wrap": SUBMIT_REASON, "test-only": SUBMIT_REASON,
    "help": SUBMIT_REASON, "usage": SUBMIT_REASON, "version": SUBMIT_REASON,
}
# sbatch's input variables for the options above: they would override the script's directives.
OWNED_VARIABLES = ("SBATCH_ARRAY_INX", "SBATCH_ERROR", "SBATCH_JOB_NAME", "SBATCH_NO_REQUEUE", "SBATCH_OPEN_MODE",
                   "SBATCH_OUTPUT", "SBATCH_REQUEUE", "SBATCH_SIGNAL")
ANOTHER_OPTION = re.compile(r"(?:^|\s)--?[A-Za-z]")  # `partition=debug --output=...`: two options in one flag


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
        if not sep:
            options[key] = None
            continue
        if not value.isprintable():
            raise ResbenchError(f"--slurm {key}: its value holds a newline or another control character "
                                f"({printable(value)}); give the value on one line")
        if ANOTHER_OPTION.search(value):
            raise ResbenchError(f"--slurm {key}={printable(value)}: one sbatch option per --slurm; repeat the flag "
                                "for each (--slurm partition=debug --slurm time=1:00:00)")
        options[key] = value
    return options


def script_path(path: Path | str, what: str) -> str:
    """`path` for the job script, where it can go there as it is; refused otherwise."""
    text = str(path)
    if not text.isprintable():
        raise ResbenchError(f"{what}, {printable(text)}, holds a newline or another control character (or bytes "
                            "that are not UTF-8), which cannot go into a SLURM job script; rename it")
    return text


def output_pattern(log_dir: Path) -> str:
    """The --output pattern of the tasks: `log_dir` with its `%` escaped for SLURM's file-name patterns."""
    text = script_path(log_dir, "the runs folder")
    if "\\" in text:
        raise ResbenchError(f"the runs folder, {printable(text)}, holds a backslash, which SLURM reads in an --output "
                            "path as 'expand no pattern' (every task's output would go to one file); rename it")
    return text.replace("%", "%%") + "/" + SLURM_OUTPUT


def directives(count: int, options: dict[str, str | None], log_dir: Path, gpus_per_run: int,
               stop_before_limit_s: int) -> list[str]:
    """The `#SBATCH` lines: the sweep's own options, then the user's, every value quoted; `gpus_per_run`:
    the GPUs each task asks for (none for runs of CPU processes)."""
    asked = {"array": f"0-{count - 1}", "chdir": script_path(Path.cwd(), "the folder the sweep runs in"),
             "output": output_pattern(log_dir), "open-mode": "append", "job-name": JOB_NAME,
             "signal": f"TERM@{stop_before_limit_s}", **options}
    if gpus_per_run and "gres" not in asked and "gpus" not in asked:
        asked["gres"] = f"gpu:{gpus_per_run}"
    return ["#SBATCH --requeue", *(f"#SBATCH --{key}" + ("" if value is None else f"={shlex.quote(value)}")
                                   for key, value in asked.items())]


def sbatch_script(runs: list[PlannedRun], options: dict[str, str | None], log_dir: Path, gpus_per_run: int,
                  stop_before_limit_s: int = STOP_BEFORE_LIMIT_S) -> str:
    """The job array: task i trains run i through `sweep.slurm_task` (which skips a finished run, appends
    the run's output to its stdout.log and requeues the task when a signal stopped it), a torchrun of its
    processes where it has several. It runs in the folder the sweep was started in, where the runs'
    relative paths point."""
    if all(run.config.device == "cpu" for run in runs):  # --gpus_per_run N CPU processes: no GPU to ask for
        gpus_per_run = 0
    cases = []
    for i, run in enumerate(runs):
        save = shlex.quote(script_path(run.save, "the run folder"))
        command = shlex.join(script_path(part, "the train command") for part in run.command)
        cases.append(f"  {i}) save={save}; command=({command}) ;;")
    task = shlex.join([script_path(CHILD_PYTHON[0], "the Python interpreter"), "-P", "-m", "resbench.sweep.slurm_task"])
    return "\n".join([
        "#!/bin/bash",
        f"# resbench sweep: {len(runs)} runs, one array task each (resume: submit this file again).",
        *directives(len(runs), options, log_dir, gpus_per_run, stop_before_limit_s),
        "",
        "# Each task trains its run as a job step, the run's output appended to <save>/stdout.log (never",
        "# through a link), this file's to the --output above; a run stopped by a signal requeues the task.",
        "set -u",
        "export PYTHONSAFEPATH=1  # no run imports from the folder it was started in",
        f"export PYTHONPATH={shlex.quote(script_path(PACKAGE_ROOT, 'resbench'))}${{PYTHONPATH:+:$PYTHONPATH}}",
        'case "$SLURM_ARRAY_TASK_ID" in',
        *cases,
        '  *) echo "resbench sweep: no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        f'exec {task} "$save" "${{command[@]}}"',
        "",
    ])


def sbatch_environment() -> tuple[dict[str, str], list[str]]:
    """sbatch's environment without the input variables that would override the sweep's own options,
    and the names of those that were set."""
    dropped = [name for name in OWNED_VARIABLES if name in os.environ]
    return {k: v for k, v in os.environ.items() if k not in OWNED_VARIABLES}, dropped


def submit(runs: list[PlannedRun], script: str, runs_dir: Path) -> str:
    """Write the job array's script (`sbatch_script`) into <runs_dir>/.launch/ and submit it; the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ResbenchError("--launcher slurm needs sbatch on PATH (SLURM's client commands): run the sweep on a "
                            "login node of the cluster, or use --launcher local")
    path = own_launch_dir(runs_dir) / f"slurm-{datetime.now():%Y%m%d-%H%M%S-%f}.sbatch"
    replace_atomically(path, lambda f: f.write(script.encode()))
    env, dropped = sbatch_environment()
    if dropped:
        print(f"sweep: not passing {', '.join(dropped)} to sbatch: the sweep sets those options itself", flush=True)
    proc = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        reason = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise ResbenchError(f"sbatch refused the job array ({reason}); check the --slurm options. "
                            f"The script is {path}")
    job = proc.stdout.strip().split(";")[0]
    for i, run in enumerate(runs):
        mark_submitted(run, "slurm", f"{job}_{i}")
    return job
