"""Signs of life while a run trains, with or without a terminal.

On a terminal, a progress bar; with stderr redirected (nohup, a SLURM log, a sweep's stdout.log),
a plain line every `LINE_EVERY_S` seconds of wall time, so a log never stays silent between two
evaluations that may be 40 minutes apart. Both show up right after the first step (which
includes compilation), and the elapsed time and ETA also go on every evaluation line.

The timing is the host clock's; the running loss mean is the one figure that needs the device,
read once per line (or bar update), so the loop still never waits for the device per step.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from resbench.console import clock, shown

LINE_EVERY_S = 30.0  # plain lines: wall seconds between two
BAR_EVERY_S = 0.5  # terminal bar: seconds between two updates


class Progress:
    """When to show progress, and what: iteration, loss mean, lr, images/s, elapsed and ETA.

    The ETA extrapolates the wall time per iteration since the first step of this session, so it
    counts evaluations and excludes the compilation that the first step pays for.
    """

    def __init__(self, total: int, first_step: int, batch_size: int, elapsed_before: float, shown: bool,
                 terminal: bool | None = None):
        self.total, self.batch_size, self.shown = total, batch_size, shown
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.every = BAR_EVERY_S if self.terminal else LINE_EVERY_S
        self.bar = tqdm(total=total, initial=first_step, disable=not (shown and self.terminal),
                        dynamic_ncols=True, unit="it")
        now = time.perf_counter()
        self.start, self.elapsed_before = now, elapsed_before
        self.next_at = now  # the first step is shown as soon as it is done
        self.eta_origin: tuple[float, int] | None = None  # (time, step) once the first step is done
        self.last = (now, first_step)  # images/s is measured since here
        self.output_lost = False  # stderr's reader went away: the loop saves and stops

    def due(self, step: int) -> bool:
        """Whether a line (or bar update) is due after `step`: a look at the host clock, nothing else."""
        now = time.perf_counter()
        if self.eta_origin is None:
            self.eta_origin = (now, step)
        return self.shown and now >= self.next_at

    def show(self, step: int, loss_mean: float, lr: float) -> None:
        now = time.perf_counter()
        images_per_sec = (step - self.last[1]) * self.batch_size / max(now - self.last[0], 1e-9)
        self.last, self.next_at = (now, step), now + self.every
        if self.terminal:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.4f}", img_s=f"{images_per_sec:.0f}")
            return
        line = (f"[iter {step:>6}/{self.total}] trn/loss {loss_mean:.4f} (mean since the last evaluation), "
                f"trn/lr {lr:.4f} (this iteration's), {images_per_sec:,.0f} images/s, {self.timing(step)}")
        if not shown(lambda: print(line, file=sys.stderr, flush=True), sys.stderr):
            self.output_lost = True

    def eta(self, step: int) -> float | None:
        """Seconds left at the pace since the session's first step; None before there is a pace."""
        if self.eta_origin is None or step <= self.eta_origin[1]:
            return 0.0 if step >= self.total else None
        t0, s0 = self.eta_origin
        return (self.total - step) * (time.perf_counter() - t0) / (step - s0)

    def timing(self, step: int, elapsed: float | None = None) -> str:
        """`elapsed H:MM:SS, ETA H:MM:SS`; elapsed is the run's wall time, earlier sessions included."""
        if elapsed is None:
            elapsed = self.elapsed_before + time.perf_counter() - self.start
        return f"elapsed {clock(elapsed)}, ETA {clock(self.eta(step))}"

    def restart(self, step: int) -> None:
        """After an evaluation: images/s counts training steps only."""
        self.last = (time.perf_counter(), step)

    def close(self) -> None:
        self.bar.close()
