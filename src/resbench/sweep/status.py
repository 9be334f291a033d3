"""`sweep --status`: the state of every run of a sweep, read from its folder alone, so that 300 runs
on a cluster can be watched without asking the scheduler."""

from __future__ import annotations

import time

from resbench.console import clock, printable
from resbench.files import open_regular
from resbench.runs import schema
from resbench.runs.reader import last_iteration, status_of
from resbench.sweep.cluster import submitted
from resbench.sweep.plan import PlannedRun, final_figures

STATES = ("finished", "running", "queued", "stopped", "failed", "new")


def last_output_line(run: PlannedRun) -> str:
    """The last line the run (or its job script) wrote to stdout.log, at most 300 characters of it."""
    try:
        with open_regular(run.save / schema.STDOUT) as f:  # (a FIFO planted there would block forever)
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_state(run: PlannedRun) -> tuple[str, str]:
    """The state of a run (one of STATES) and a detail, from its folder alone."""
    status = status_of(run.save)
    if status == "finished":
        return "finished", final_figures(run)
    if status != "running":  # diverged, or a summary.json that cannot be read
        return "failed", f"summary.json says {printable(status)}" if status != "unknown" else \
            "summary.json cannot be read"
    done, total = last_iteration(run.save), run.config.optim_ni
    if (run.save / schema.LOCK).exists():
        since = time.time() - max((run.save / name).stat().st_mtime for name in (schema.LOCK, schema.METRICS)
                                  if (run.save / name).exists())
        return "running", f"iteration {done} of {total}, last written {clock(since)} ago"
    last = last_output_line(run)
    if last.startswith(("error:", "resbench sweep: the run failed")):
        return "failed", printable(last)
    where = printable(submitted(run) or "")
    if done:
        return "stopped", f"at iteration {done} of {total}; resumes when launched again ({where or 'local'})"
    return ("queued", f"submitted as {where}") if where else ("new", "")


def status_report(runs: list[PlannedRun]) -> str:
    """One line per run, then the counts."""
    states = [run_state(run) for run in runs]
    lines = [f"  {state:8} {printable(run.save)}" + (f": {detail}" if detail else "")
             for run, (state, detail) in zip(runs, states)]
    counts = ", ".join(f"{n} {state}" for state in STATES if (n := sum(s == state for s, _ in states)))
    return "\n".join([f"sweep status: {len(runs)} runs: {counts}", *lines])
