"""The training loop's clock and device-side sum: which seconds are training (and of those, each
session's warm-up) and which are the wall clock's, and the loss summed on the device between the
points where the loop reads it."""

from __future__ import annotations

import time

import torch

from resbench.device import distributed, hotpath
from resbench.train.resume import RunState

# Each session's first steps, timed apart from the steady ones: the first compiles the step, the
# second and third capture and first replay its CUDA graphs (mode reduce-overhead), and every device's
# allocator and convolution library pick their buffers and kernels. `resbench bench --warmup` too.
WARMUP_STEPS = 3


class Meter:
    """What the loop accumulates between synchronisations with the device, and its clock.

    The loss is summed on the device, so a step never waits for it; it is folded into the RunState
    at logging points only, so a resumed run rounds its sums exactly as the uninterrupted one did.
    """

    def __init__(self, state: RunState, device: torch.device):
        self.device = device
        self.loss_sum = torch.full((), state.loss_unlogged, device=device)
        hotpath.sync(device)
        self.session_start = self.interval_start = time.perf_counter()
        self.wall_at_session_start = state.wall_seconds
        self.interval_step = state.step  # the step the current interval started at
        self.warmup_until = state.step + WARMUP_STEPS  # this session's warm-up ends after this step

    def add(self, loss: torch.Tensor, state: RunState, is_eval: bool) -> None:
        """Count the step just taken (`state.step` is past it); where it ends this session's warm-up,
        book the warm-up's time apart (an evaluation's lap ends it too)."""
        self.loss_sum += loss
        state.loss_count += 1
        if state.step == self.warmup_until and not is_eval:
            self.lap(state, wait=True)

    def fold(self, state: RunState, world: distributed.World) -> None:
        """Move the device sum into the state (averaging the loss over ranks)."""
        state.loss_sum += distributed.all_reduce_sum(self.loss_sum, world).item() / world.world_size
        self.loss_sum.zero_()

    def lap(self, state: RunState, wait: bool = False) -> None:
        """Book the time since the last lap as training time, and as warm-up if the interval began in
        it; `wait`: first wait for the device (the caller has not synchronised)."""
        if wait:
            hotpath.sync(self.device)
        now = time.perf_counter()
        state.train_seconds += now - self.interval_start
        if self.interval_step < self.warmup_until:
            state.warmup_seconds += now - self.interval_start
            state.warmup_steps += state.step - self.interval_step
        state.wall_seconds = self.wall_at_session_start + now - self.session_start
        self.interval_start, self.interval_step = now, state.step

    def loss_mean(self, state: RunState) -> float:
        """The mean training loss since the last evaluation (this rank's unfolded part included):
        a progress figure, which reads the device sum without folding it."""
        return (state.loss_sum + self.loss_sum.item()) / max(state.loss_count, 1)

    def stamp(self, state: RunState) -> None:
        """The wall clock of the run, once the device has finished what was queued."""
        hotpath.sync(self.device)
        state.wall_seconds = self.wall_at_session_start + time.perf_counter() - self.session_start

    def restart(self, state: RunState) -> None:
        self.interval_start, self.interval_step = time.perf_counter(), state.step
