"""`resbench sweep --launcher slurm`: the sweep's runs as one SLURM job array, a task per run folder.

The script is written for `sbatch` directly rather than through submitit: it is a plain file a
user can read, keep, edit and resubmit, `--dry-run` prints exactly what is submitted, nothing is
pickled between the login node and the compute nodes, and no Python package is needed on either
side beyond resbench itself. Each task runs the very command the local sweep runs
(`resbench train ... --save <folder>`, as a job step), so what is finished is skipped and what is
half done resumes. Before the time limit, and on preemption (`scancel --signal=TERM`), the job
step gets SIGTERM; the trainer saves last.pt and exits with status 130, and the task requeues
itself (`scontrol requeue`), to resume from there: a 48,000-iteration run survives any number of
stops. SLURM holds a requeued job for about two minutes (its BeginTime) before it may start again.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from resbench.errors import ResbenchError
from resbench.files import replace_atomically
from resbench.sweep.grid import PACKAGE_ROOT, PlannedRun
from resbench.sweep.launch import LAUNCH_DIR, distributed_command, launch_dir, mark_submitted

SIGNAL = "TERM@120"  # SIGTERM to the job step two minutes before the time limit: time to save last.pt
STOPPED_BY_SIGNAL = 130  # `resbench train`'s exit status once it has saved its state on a signal
# sbatch options the launcher sets itself: the array is the sweep, the output goes beside the runs.
OWNED_OPTIONS = ("array", "output", "error", "parsable", "wrap", "requeue", "open-mode", "chdir")
OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*")


def slurm_options(pairs: list[str]) -> dict[str, str]:
    """`--slurm KEY=VALUE` pairs as sbatch options (`partition=gpu`, `time=48:00:00`, `gres=gpu:1`);
    `signal=TERM@300` changes how early the runs are told to save."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("_", "-")
        if not sep or not OPTION_NAME.fullmatch(key) or not value or any(c in value for c in "\n\r\0"):
            raise ResbenchError(f"--slurm {pair!r}: expected KEY=VALUE with an sbatch option name, e.g. "
                                "--slurm partition=gpu --slurm time=48:00:00")
        if key in OWNED_OPTIONS:
            raise ResbenchError(f"--slurm {key}: the sweep sets --{key} itself (one array task per run folder, "
                                f"output in the runs folder's {LAUNCH_DIR}/)")
        if key == "signal" and not re.fullmatch(r"TERM@\d+", value):
            raise ResbenchError(f"--slurm signal={value}: only TERM@SECONDS (the trainer saves on SIGTERM)")
        options[key] = value
    return options


def sbatch_script(runs: list[PlannedRun], options: dict[str, str], log_dir: Path, gpus_per_run: int) -> str:
    """The job array: task i trains run i (skipping it if finished), requeues itself when stopped by a signal.
    It runs in the folder the sweep was started in, where the runs' relative paths point."""
    asked = {"job-name": "resbench-sweep", "signal": SIGNAL, **options}
    if gpus_per_run and "gres" not in asked and "gpus" not in asked:
        asked["gres"] = f"gpu:{gpus_per_run}"
    header = [f"#SBATCH --array=0-{len(runs) - 1}", f"#SBATCH --chdir={Path.cwd()}", f"#SBATCH --output={log_dir}/%A_%a.out",
              "#SBATCH --requeue", "#SBATCH --open-mode=append",
              *(f"#SBATCH --{key}={value}" for key, value in asked.items())]
    cases = []
    for i, run in enumerate(runs):
        command = distributed_command(run, gpus_per_run)
        cases.append(f"  {i}) save={shlex.quote(str(run.save))}; command=({shlex.join(command)}) ;;")
    return "\n".join([
        "#!/bin/bash",
        f"# resbench sweep: {len(runs)} runs, one array task each (resume: submit this file again).",
        *header,
        "",
        "# The run's own output goes to <save>/stdout.log, as in a local sweep; this file's to the --output above.",
        "set -u",
        "export PYTHONSAFEPATH=1  # no run imports from the folder it was started in",
        f"export PYTHONPATH={shlex.quote(str(PACKAGE_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        'case "$SLURM_ARRAY_TASK_ID" in',
        *cases,
        '  *) echo "resbench sweep: no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        'if [ -f "$save/summary.json" ]; then echo "resbench sweep: $save has finished"; exit 0; fi',
        'mkdir -p "$save"',
        'echo "resbench sweep: job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}, start ${SLURM_RESTART_COUNT:-0}, '
        '$(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$save/stdout.log"',
        'srun --ntasks=1 "${command[@]}" >> "$save/stdout.log" 2>&1',
        "status=$?",
        'if [ -f "$save/summary.json" ]; then exit 0; fi',
        f'if [ "$status" -eq {STOPPED_BY_SIGNAL} ]; then  # saved on SIGTERM (time limit or preemption): go again',
        '  echo "resbench sweep: stopped and saved; requeued" >> "$save/stdout.log"',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "  exit 0",
        "fi",
        'echo "resbench sweep: the run failed with exit status $status" >> "$save/stdout.log"',
        'exit "$status"',
        "",
    ])


def submit(runs: list[PlannedRun], options: dict[str, str], runs_dir: Path, gpus_per_run: int) -> str:
    """Write the job array's script into <runs_dir>/.launch/ and submit it; the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ResbenchError("--launcher slurm needs sbatch on PATH (SLURM's client commands): run the sweep on a "
                            "login node of the cluster, or use --launcher local")
    log_dir = launch_dir(runs_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    script = log_dir / f"slurm-{datetime.now():%Y%m%d-%H%M%S-%f}.sbatch"
    text = sbatch_script(runs, options, log_dir, gpus_per_run)
    replace_atomically(script, lambda f: f.write(text.encode()))
    proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise ResbenchError(f"sbatch refused the job array ({reason}); check the --slurm options. "
                            f"The script is {script}")
    job = proc.stdout.strip().split(";")[0]
    for i, run in enumerate(runs):
        mark_submitted(run, "slurm", f"{job}_{i}")
    return job
