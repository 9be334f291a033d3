"""CPU threads: how many a run uses, how a sweep shares the cores, and a warning when others use them.

Measured on a 2-core CPU busy with other work: one thread gave 47.7 images/s where torch's
default of two gave 6.8, because two processes that each use every core fight over them. So a
sweep of N runs at once gives each run cores/N threads, and a run that starts on a machine whose
load already exceeds its cores says that it will be slow, and why.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset, cgroups and SLURM set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Threads for each of `jobs` runs sharing the cores: an equal share, at least one."""
    return max(1, (cores or available_cores()) // jobs)


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: keep torch's default); returns the count in use."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(cores: int | None = None, threads: int | None = None) -> str | None:
    """A warning when the machine is already busier than its cores, else None; its advice fits the run's
    `threads` (None: torch's default, one per core): one thread is already the fewest."""
    load, cores = load_average(), cores or available_cores()
    if load is None or load <= cores:
        return None
    advice = ("This run already uses 1 thread: fewer processes at once is what helps" if threads == 1 else
              "Fewer threads can help: --threads 1, or `sweep --jobs N` (which splits the cores)")
    return (f"warning: this machine is busy (load average {load:.1f} on {cores} cores) before this starts: "
            "training will be slower than on an idle machine, up to many times when every process uses "
            f"every core. {advice}")
