"""Real, single-machine SLURM and Ray clusters for the launcher tests, started and stopped by fixtures.

SLURM: Debian's slurm-wlm and munge (`.ci/run` installs them), run as root with every file in a
temporary folder: a munged on its own socket, a slurm.conf naming this machine as the one node,
slurmctld and slurmd. Ray: `ray start --head` on 127.0.0.1 with no CPUs of its own, and worker
nodes, each a `ray start --address` of its own with one CPU, so that a node can be killed alone.
Where the machine cannot run one (not installed, not root), its tests skip with one line saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def slurm_unavailable() -> str | None:
    """Why a local SLURM cannot run here, or None."""
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge (.ci/run does)"
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd starts jobs as their users)"
    return None


@dataclass
class Slurm:
    """A running single-node SLURM; `env` points its client commands at it."""

    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, float] = field(default_factory=dict)  # requeued jobs, since when they wait

    def run(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True).stdout

    def queue(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i %T %r").splitlines()

    def release(self, job: str, settle: float = 5.0) -> None:
        """Let a requeued job start soon: SLURM holds one for 120 s (its BeginTime). Not at once: a job that
        restarts within a second of its requeue finds its credential revoked and fails, so a few seconds
        after it was first seen waiting."""
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], env=self.env, capture_output=True,
                               text=True).stdout.strip()
        if state != "PENDING BeginTime":
            self.waiting.pop(job, None)
            return
        since = self.waiting.setdefault(job, time.monotonic())
        if time.monotonic() - since >= settle:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=self.env, capture_output=True)
            self.waiting.pop(job)


def start_slurm(folder: Path) -> Slurm:
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(["munged", "--force", f"--socket={folder / 'munge.sock'}", f"--key-file={key}",
                    f"--log-file={folder / 'munged.log'}", f"--pid-file={folder / 'munged.pid'}",
                    f"--seed-file={folder / 'munged.seed'}"], check=True)
    host = socket.gethostname()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 ** 20 // 2
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=resbenchtest", f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={folder / 'munge.sock'}", "CredType=cred/munge",
        "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}", f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}", f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SwitchType=switch/none", "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "JobRequeue=1", "KillWait=30",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    slurm = Slurm(folder, {**os.environ, "SLURM_CONF": str(conf)})
    subprocess.run(["slurmctld", "-i"], env=slurm.env, check=True)
    subprocess.run(["slurmd"], env=slurm.env, check=True)
    wait_for(lambda: "idle" in slurm.run("sinfo", "-h", "-o", "%T"), 60, "the SLURM node to be idle")
    return slurm


def stop_slurm(slurm: Slurm) -> None:
    """Cancel every job, then stop the daemons: SIGTERM, and SIGKILL for one still there after 10 s."""
    subprocess.run(["scancel", "--full", "--user=root"], env=slurm.env, capture_output=True)
    pids = []
    for name in ("slurmd", "slurmctld", "munged"):
        try:
            pids.append(int((slurm.folder / f"{name}.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 10, "the SLURM daemons to stop")
            return
        except TimeoutError:
            continue


# ---------------------------------------------------------------- Ray

def ray_unavailable() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed: pip install 'resbench[ray]' (.ci/run does)"
    return None


def ray_command() -> list[str]:
    return [str(Path(sys.executable).with_name("ray"))] if Path(sys.executable).with_name("ray").exists() else ["ray"]


@dataclass
class Ray:
    """A running Ray cluster on this machine: its address, and the worker nodes by their manager port."""

    address: str
    folder: Path
    workers: dict[int, int] = field(default_factory=dict)  # node manager port -> raylet pid
    env: dict[str, str] = field(default_factory=dict)

    def add_worker(self, cpus: int = 1) -> int:
        port = free_port()
        subprocess.run([*ray_command(), "start", f"--address={self.address}", f"--num-cpus={cpus}", "--num-gpus=0",
                        f"--node-manager-port={port}", "--disable-usage-stats"], env=self.env, check=True,
                       capture_output=True)
        wait_for(lambda: raylet_pid(port) is not None, 60, "the worker's raylet")
        self.workers[port] = raylet_pid(port)
        return port

    def kill_worker(self, port: int) -> None:
        """The node is lost: its raylet SIGKILLed, as when a machine goes down (its workers follow it)."""
        os.kill(self.workers.pop(port), signal.SIGKILL)


def raylet_pid(port: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"raylet") and f"--node_manager_port={port}".encode() in cmdline:
                return int(proc.name)
    return None


# A lost node is declared dead after 3 failed health checks a second apart (each given 2 s), not Ray's 5 checks
# 3 s apart: its run is retried 4 s after the kill instead of 15 s (measured here).
HEALTH_CHECKS = '{"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}'


def start_ray(folder: Path) -> Ray:
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([*ray_command(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                    f"--system-config={HEALTH_CHECKS}"], env=env, check=True, capture_output=True)
    return Ray(f"127.0.0.1:{port}", folder, env=env)


def stop_ray(ray: Ray) -> None:
    subprocess.run([*ray_command(), "stop", "--force"], env=ray.env, capture_output=True)
