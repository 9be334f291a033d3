"""The reference's per-device BatchNorm on one device: batch statistics over groups of the batch.

The reference trains its ImageNet rows data parallel, 2 GPUs at 32 px and 4 at 64 px, so each
BatchNorm normalises with the statistics of one device's 512 or 256 images, not of the global
batch of 1,024 (recipe.md, Multi-device). On one device `--bn_groups N` splits each device's batch
into N contiguous groups and normalises each with its own statistics, as N devices would: a
"ghost" batch norm (Hoffer, Hubara and Soudry, 2017, "Train longer, generalize better"), here with
the multi-device semantics for the running statistics. Each device keeps its own, and the
reference averages them before every evaluation; the running average is linear in the batch
statistics, so averaging the groups' updates at every step gives that very average, and one set
of running statistics is kept. The groups are the ranks' shares (`distributed.shard`), so one
process with N groups takes the same step as N processes (tests/device/test_distributed.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of each of `groups` equal, contiguous parts of
    the batch; inference (running statistics) as BatchNorm2d. Its parameters and buffers are
    BatchNorm2d's, so its checkpoints load into the plain model."""

    def __init__(self, num_features: int, groups: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        if len(x) % self.groups:
            raise ValueError(f"a batch of {len(x)} does not split into {self.groups} BatchNorm groups")
        self.num_batches_tracked.add_(1)
        outputs, means, variances = [], [], []
        for part in x.chunk(self.groups):
            mean, var = self.running_mean.clone(), self.running_var.clone()  # this group's "device" copy
            outputs.append(F.batch_norm(part, mean, var, self.weight, self.bias, True, self.momentum, self.eps))
            means.append(mean)
            variances.append(var)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


def group_batchnorms(model: nn.Module, groups: int) -> nn.Module:
    """Every BatchNorm2d of `model` (in place) as a GhostBatchNorm2d of `groups`, with its parameters
    and statistics; a model of one group is left as it is."""
    if groups == 1:
        return model
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            ghost = GhostBatchNorm2d(child.num_features, groups, eps=child.eps, momentum=child.momentum,
                                     device=child.weight.device, dtype=child.weight.dtype)
            ghost.load_state_dict(child.state_dict())
            setattr(model, name, ghost)
        else:
            group_batchnorms(child, groups)
    return model
