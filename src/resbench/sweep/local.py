"""`sweep --launcher local`: each run a `resbench train` subprocess, `--jobs` of them at a time, so
that a crash or out-of-memory in one run cannot take the others down and several can share one
device. With `--gpus_per_run N` each run is a torchrun of N processes (data parallel), and the runs
at once get disjoint GPUs (CUDA_VISIBLE_DEVICES); without GPUs, N CPU processes (gloo).

A run stops, saving its state, when the sweep dies, even by SIGKILL (`stop_with_parent`): it must
not train on unwatched, holding its folder's lock, once nobody will read its result.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from resbench.console import printable, say
from resbench.errors import ResbenchError
from resbench.files import open_own_file
from resbench.runs import schema
from resbench.sweep.plan import PACKAGE_ROOT, PlannedRun, final_figures, own_run_folder

PARENT_VARIABLE = "RESBENCH_SWEEP_PID"  # set in a run's environment: the sweep it must not outlive


def child_env() -> dict[str, str]:
    """The environment of a train subprocess: it must import this same resbench, installed or not, and
    nothing from the folder it runs in (torchrun's workers are started without `-P`), and know the sweep
    whose death must stop it."""
    env = dict(os.environ, PYTHONSAFEPATH="1")
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
    if os.getppid() != int(sweep):  # a wrapper stands in between (torchrun), which outlives a SIGKILLed sweep
        if not process_exists(int(sweep)):
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=watch_sweep, args=(int(sweep),), daemon=True, name="resbench-sweep").start()


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


def watch_sweep(sweep: int, interval: float = 1.0) -> None:
    """Send this process SIGTERM once the sweep `sweep` is gone (a rank under torchrun: its parent lives on)."""
    while process_exists(sweep):
        threading.Event().wait(interval)
    os.kill(os.getpid(), signal.SIGTERM)


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in named.split(",")] if named else [str(i) for i in range(torch.cuda.device_count())]
    return names[:torch.cuda.device_count()]


def gpu_slots(jobs: int, gpus_per_run: int) -> queue.SimpleQueue | None:
    """`jobs` disjoint sets of `gpus_per_run` GPUs, one per run at once; None where runs pick no GPU (no
    --gpus_per_run, or no CUDA: their processes train on the CPU)."""
    gpus = visible_gpus() if gpus_per_run > 0 else []
    if not gpus:
        return None
    if jobs * gpus_per_run > len(gpus):
        raise ResbenchError(f"--jobs {jobs} runs of --gpus_per_run {gpus_per_run} need {jobs * gpus_per_run} GPUs, "
                            f"and this machine shows {len(gpus)}; run fewer at a time")
    slots: queue.SimpleQueue = queue.SimpleQueue()
    for job in range(jobs):
        slots.put(gpus[job * gpus_per_run:(job + 1) * gpus_per_run])
    return slots


RUNNING: set[subprocess.Popen] = set()  # the train subprocesses running now


def execute(run: PlannedRun, gpus: list[str] | None = None) -> str | None:
    """Train one run (on `gpus`, if given), its output appended to <save>/stdout.log; the reason it failed,
    or None."""
    env = child_env() | ({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {})
    try:
        own_run_folder(run.save)
        with open_own_file(run.save / schema.STDOUT, append=True) as log:
            child = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


def execute_all(runs: list[PlannedRun], jobs: int,
                slots: queue.SimpleQueue | None = None) -> list[tuple[PlannedRun, str]]:
    """Run the runs `jobs` at a time (each on a set of GPUs from `slots`, if given), reporting each as it
    starts and ends; the failed ones with their reasons."""
    lock, started, done, failures = threading.Lock(), itertools.count(1), itertools.count(1), []

    def job(run: PlannedRun) -> None:
        gpus = slots.get() if slots is not None else None
        on = f"; GPUs {printable(','.join(gpus))}" if gpus else ""
        with lock:
            say(f"[start {next(started)}/{len(runs)}] {printable(run.save)} ({run.state}{on}; its output goes to "
                f"{printable(run.save / schema.STDOUT)})")
        try:
            reason = execute(run, gpus)
        finally:
            if gpus is not None:
                slots.put(gpus)
        with lock:
            status = f"finished: {final_figures(run)}" if reason is None else \
                f"FAILED ({printable(reason)}, see {printable(run.save / schema.STDOUT)})"
            say(f"[{next(done)}/{len(runs)}] {printable(run.save)}: {status}")
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
