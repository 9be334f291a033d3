"""BatchNorm's running variance as the reference keeps it: an average of the biased batch variances.

PyTorch's BatchNorm averages the unbiased batch variance (× N/(N−1), N = the values of a channel
in one batch: this device's batch × height × width) into its running variance; the reference
(Flax) averages the biased one. At batch 256 the factor is 1 + 6e-5 (depth 20, 8×8 last stage)
to 1 + 2.4e-4 (depth 18, 4×4). The running average is linear in the batch variances and N is
fixed per layer (every training batch is full), so the reference's value follows exactly from
PyTorch's, with nothing added to the training step:

    rv_ref = (rv − a) / c + a,   c = N / (N − 1),   a = (1 − m)^t

(m the momentum, t the updates so far, `num_batches_tracked`; the running variance starts at 1).
Evaluation and best.pt see rv_ref; training continues in PyTorch's form, which last.pt holds.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from torch import nn

from resbench.device.distributed import World, shard


def batchnorms(model: nn.Module) -> Iterator[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            yield name, module


@torch.no_grad()
def values_per_channel(model: nn.Module, image_size: int, batch_size: int, world: World,
                       sync_bn: bool, groups: int = 1) -> dict[str, int]:
    """N of each BatchNorm layer (by name): the images it normalises at once (this rank's share
    of the batch, or one of its `groups` (`bngroups`), or the whole batch under SyncBatchNorm) times
    the layer's height × width, which one inference-mode forward of a blank image reveals."""
    share = shard(batch_size, world)
    images = batch_size if sync_bn else (share.stop - share.start) // groups
    pixels: dict[str, int] = {}

    def record(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        pixels[name] = args[0][0, 0].numel()

    hooks = [module.register_forward_pre_hook(functools.partial(record, name)) for name, module in batchnorms(model)]
    was_training = model.training
    try:
        param = next(model.parameters())
        model.eval()(torch.zeros(1, 3, image_size, image_size, device=param.device)
                     .contiguous(memory_format=torch.channels_last))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name, module in batchnorms(model):
        if module.momentum is None or not module.track_running_stats:
            raise ValueError(f"BatchNorm {name} keeps no exponential running average; nothing to correct")
    return {name: images * count for name, count in pixels.items()}


@contextlib.contextmanager
def reference_running_variance(model: nn.Module, counts: dict[str, int]) -> Iterator[None]:
    """Inside: every running variance in the reference's form (biased batch variances). On the way
    out, back to PyTorch's form, so that training continues as it would have; whatever was done
    to the statistics inside (averaging them over ranks) stays."""
    layers = [(module, counts[name]) for name, module in batchnorms(model)]
    convert(layers, to_reference=True)
    try:
        yield
    finally:
        convert(layers, to_reference=False)


@torch.no_grad()
def convert(layers: list[tuple[nn.modules.batchnorm._BatchNorm, int]], to_reference: bool) -> None:
    for module, n in layers:
        a = (1.0 - module.momentum) ** module.num_batches_tracked.float()  # on the device: no sync
        c = n / (n - 1)
        centred = module.running_var.sub_(a)
        (centred.div_(c) if to_reference else centred.mul_(c)).add_(a)
