"""fp16 loss scaling as the reference does it: a constant scale of 2^16, and an update that is
skipped, not retried, when the gradients are not finite.

The reference creates a dynamic loss scale starting at 2^16, but its training loop passes that
initial scale to every step and drops the updated one, so the scale never changes: all its fp16
logs show 65,536 in every window. `torch.amp.GradScaler` would double the scale every 2,000 finite
steps and then skip each update that overflows at the larger scale (10-24 per 48k run). Here the
scale stays at 65,536; a step whose gradients hold an inf or NaN leaves weights and momentum as
they were and is counted.

The count is the reference's schedule clock too: at a skipped step it keeps its optimiser's whole
state, the step count its learning-rate schedule reads included, so its schedule lags by one
iteration per skipped update (docs/reference/imagenet-x.md; about one step in a thousand at
ImageNet scale, never on the CIFAR and TinyImageNet rows). The next step's learning rate therefore
needs this step's verdict. No step waits for its own: the finiteness check writes a device flag
that the fused SGD kernel reads (it skips the whole update, momentum included, when the flag is
set), the flag is copied to the host behind the step, and the next step reads it only once its
own forward and backward pass are queued (`skipped_updates`), so the device always has work.
"""

from __future__ import annotations

from typing import Any

import torch

REFERENCE_LOSS_SCALE = 65_536.0  # 2^16, the reference's initial (and so its only) scale


class ConstantLossScale:
    """Multiplies the loss by `scale` before backward; `step` unscales the gradients and updates
    only when all of them are finite. Disabled (fp32, bf16): plain backward and step."""

    def __init__(self, device: torch.device | str, enabled: bool, scale: float = REFERENCE_LOSS_SCALE):
        self.enabled, self.scale = enabled, float(scale)
        device = torch.device(device)
        self._scale = torch.full((), self.scale, device=device)
        self._inv_scale = torch.full((), 1.0 / self.scale, device=device)
        self._one = torch.ones((), device=device)
        self._found_inf = torch.zeros((), device=device)
        self._unscaled = False
        self.skipped = 0  # updates skipped so far, as far as the host has read their flags
        cuda = device.type == "cuda"
        self._flag = torch.zeros((), pin_memory=cuda)  # the last step's flag, copied to the host behind it
        self._flag_copied = torch.cuda.Event() if cuda else None
        self._flag_unread = False

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale in place (before clipping or measuring them)."""
        if self.enabled and not self._unscaled:
            self._check_and_unscale(optimizer, self._inv_scale)
            self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser's update unless a gradient is not finite, which `skipped_updates` counts."""
        if not self.enabled:
            optimizer.step()
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):  # fused SGD: it unscales and skips itself
            if not self._unscaled:
                self._check_and_unscale(optimizer, self._one)  # the check alone; the kernel divides
            optimizer.grad_scale = None if self._unscaled else self._scale  # type: ignore[attr-defined]
            optimizer.found_inf = self._found_inf  # type: ignore[attr-defined]
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
        else:
            self.unscale_(optimizer)
            if not self._found_inf.item():  # waits for the device: optimisers without a fused kernel only
                optimizer.step()
        self.skipped_updates()  # the previous step's flag, before this step's takes its place
        self._flag.copy_(self._found_inf, non_blocking=True)
        if self._flag_copied is not None:
            self._flag_copied.record()
        self._flag_unread = True
        self._found_inf.zero_()
        self._unscaled = False

    def skipped_updates(self) -> int:
        """The updates skipped by the steps taken so far. Waits for the last step's flag only, not for
        the work queued after it: a step that asks once its forward and backward pass are queued keeps
        the device busy while it waits."""
        if self._flag_unread:
            if self._flag_copied is not None:
                self._flag_copied.synchronize()
            self.skipped += int(self._flag.item())
            self._flag_unread = False
        return self.skipped

    def _check_and_unscale(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, inv_scale)

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale} if self.enabled else {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Nothing to restore: the scale is a constant. A last.pt written by torch.amp.GradScaler
        (before the scale was constant) loads too; its run continues at the constant scale."""
        if not isinstance(saved, dict):
            raise TypeError(f"the loss scale's state is a {type(saved).__name__}, not a dict")
