"""`resbench sweep --launcher ray`: each run a Ray task with its CPUs and GPUs, on an existing Ray
cluster (`ray start --head`, a KubeRay address) or on a local one the sweep starts.

A task runs the command a local sweep runs, `resbench train ... --save <folder>`, as a subprocess of
its Ray worker, so the run folders must be on storage every node sees. A node lost mid-run takes
the worker with it; its trainer gets SIGTERM from the kernel when its parent dies (PR_SET_PDEATHSIG),
saves last.pt where it still can, and Ray runs the task again elsewhere (`max_retries`): the new
attempt waits for the folder's lock, then the trainer resumes from the last checkpoint. A run
stopped by a signal (status 130) is retried the same way; a run that fails (diverged, bad data) is not.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from resbench.console import log, printable, say
from resbench.errors import ResbenchError
from resbench.files import drop_lock_file, open_own_file, take_lock
from resbench.runs import schema
from resbench.sweep.cluster import STOPPED_BY_SIGNAL, mark_submitted
from resbench.sweep.local import child_env
from resbench.sweep.plan import PlannedRun, final_figures, own_run_folder

RETRIES = 10  # attempts after the first, for lost nodes and runs stopped by a signal
CONNECT_SECONDS = 5.0


class RunStopped(RuntimeError):
    """The trainer saved its state on a signal and stopped: Ray should run the task again."""


def train_task(command: list[str], save: str, cwd: str) -> int:
    """On a Ray worker: train one run into `save` (output appended to its stdout.log) from the folder the
    sweep was started in, `cwd` (where relative paths point: it must be on the storage every node sees);
    the exit status."""
    folder = own_run_folder(Path(cwd, save))
    # An earlier attempt's trainer may still be saving (its node's worker was lost): wait for its lock.
    lock = take_lock(folder / schema.LOCK, on_wait=lambda: log(f"waiting for {printable(folder)}'s earlier attempt "
                                                               "to stop"))
    drop_lock_file(folder / schema.LOCK, lock)
    os.close(lock)
    with open_own_file(folder / schema.STDOUT, append=True) as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=child_env(), cwd=cwd).returncode
    if code == STOPPED_BY_SIGNAL and not (folder / schema.SUMMARY).exists():
        raise RunStopped(f"{folder} stopped by a signal with its state saved")
    return code


def import_ray():
    try:
        import ray
    except ImportError:
        raise ResbenchError("--launcher ray needs Ray: pip install 'resbench[ray]'") from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds, with one line, where Ray would retry an unreachable address for a minute."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ResbenchError(f"--address {address!r}: expected HOST:PORT (`ray start --head` prints it), "
                            "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ResbenchError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with "
                            "`ray start --head`, or leave --address out for a local one") from None


def check_resources(ray, gpus_per_run: int, cpus_per_run: int) -> None:
    """A run no node can hold would wait forever: refuse it now."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    if gpus_per_run > most_gpus:
        raise ResbenchError(f"each run asks for {gpus_per_run} GPUs (--gpus_per_run) but the largest node of the "
                            f"Ray cluster has {most_gpus:g}; ask for fewer")
    if cpus_per_run > most_cpus:
        raise ResbenchError(f"each run asks for {cpus_per_run} CPUs (--cpus_per_run) but the largest node of the "
                            f"Ray cluster has {most_cpus:g}; ask for fewer")


def run_on_ray(runs: list[PlannedRun], address: str | None, cpus_per_run: int, gpus_per_run: int,
               retries: int = RETRIES) -> list[tuple[PlannedRun, str]]:
    """Train the runs as Ray tasks, reporting each as it ends; the failed ones with their reasons."""
    ray = import_ray()
    if address:
        check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False,
                 configure_logging=False)
    except UnicodeEncodeError:  # Ray sends the driver's sys.path, the current folder first, as UTF-8
        raise ResbenchError(f"Ray cannot run a sweep from {printable(os.getcwd())}: the folder's path is not UTF-8; "
                            "run it from another folder, or use --launcher local") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ResbenchError(f"cannot start or join the Ray cluster{f' at {address}' if address else ''}: "
                            f"{' '.join(str(exc).split())[:300]}") from None
    try:
        check_resources(ray, gpus_per_run, cpus_per_run)
        task = ray.remote(train_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries,
                                              retry_exceptions=[RunStopped], name="resbench-train")
        pending = {}
        for run in runs:
            pending[task.remote(run.command, str(run.save), os.getcwd())] = run
            mark_submitted(run, "ray", ray.get_runtime_context().get_job_id())
        say(f"sweep: {len(runs)} runs submitted to Ray ({plural(cpus_per_run, 'CPU')}, {plural(gpus_per_run, 'GPU')} "
            "each)")
        return wait_for(ray, pending)
    finally:
        ray.shutdown()


def plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def wait_for(ray, pending: dict) -> list[tuple[PlannedRun, str]]:
    failures, total = [], len(pending)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(ref)
        try:
            code = ray.get(ref)
            reason = None if code == 0 and run.state == "finished" else f"exit status {code}"
        except ray.exceptions.RayError as exc:  # retries spent: lost nodes, or stopped again and again
            reason = " ".join(str(exc).split())[:300]
        status = f"finished: {final_figures(run)}" if reason is None else \
            f"FAILED ({printable(reason)}, see {printable(run.save / schema.STDOUT)})"
        say(f"[{total - len(pending)}/{total}] {printable(run.save)}: {status}")
        if reason is not None:
            failures.append((run, reason))
    return failures
