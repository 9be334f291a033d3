"""K runs that differ only in their seed, packed into one network (to keep a large GPU busy).

Every layer of the packed network is the K copies' layers side by side: a convolution becomes one
grouped convolution (groups=K, copy k owns channel block k), a BatchNorm one BatchNorm over K×C
channels (each channel's statistics are its own, so each copy normalises over its own batch), the
classifier a block-diagonal product. Copy k sees its own data order and augmentation (its images
in input channels 3k..3k+2). The loss is the sum of the copies' mean losses, so the gradient of
each copy's weights is exactly the gradient of its own run, and SGD with weight decay and
momentum is elementwise: each copy trains as it would alone, up to float rounding (grouped and
dense convolutions sum in other orders).

What is not packed: gradient clipping and fp16 loss scaling decide per run (a global norm, a
skipped step) and would need per-copy decisions; `packable` refuses them. The few settings these
functions read are plain arguments: models/ knows nothing of a trainer's settings.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.resnet import ResNet


class PackedLinear(nn.Module):
    """K bias-free classifiers: (B, K·F) features → (B, K, classes), copy k's rows from block k."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([w.detach().clone() for w in weights]))  # K × classes × F

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        k, _, f = self.weight.shape
        return torch.einsum("bkf,kcf->bkc", features.view(len(features), k, f), self.weight)


def packed_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first, k = convs[0], len(convs)
    conv = nn.Conv2d(first.in_channels * k, first.out_channels * k, first.kernel_size, first.stride,
                     first.padding, groups=k, bias=False)
    conv.weight.data.copy_(torch.cat([c.weight.detach() for c in convs]))
    return conv


def packed_batchnorm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = norms[0]
    norm = nn.BatchNorm2d(first.num_features * len(norms), eps=first.eps, momentum=first.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(norm, name).data.copy_(torch.cat([getattr(n, name).detach() for n in norms]))
    norm.num_batches_tracked.copy_(first.num_batches_tracked)
    return norm


def pack(models: list[ResNet]) -> ResNet:
    """One network computing all of `models` (same architecture, any weights) side by side."""
    packed = copy.deepcopy(models[0])
    k = len(models)
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(packed.named_modules()):
        parent_name, _, leaf = name.rpartition(".")
        parent = packed.get_submodule(parent_name) if parent_name else packed
        if isinstance(module, nn.Conv2d):
            setattr(parent, leaf, packed_conv([m[name] for m in modules]))
        elif isinstance(module, nn.BatchNorm2d):
            setattr(parent, leaf, packed_batchnorm([m[name] for m in modules]))
        elif isinstance(module, nn.Linear):
            setattr(parent, leaf, PackedLinear([m[name].weight for m in modules]))
    packed.mean = models[0].mean.repeat(1, k, 1, 1)
    packed.std = models[0].std.repeat(1, k, 1, 1)
    return packed


def unpack(packed: ResNet, template: ResNet, k: int) -> list[dict[str, torch.Tensor]]:
    """The K copies' state_dicts, each in `template`'s layout (a plain ResNet's, as best.pt holds)."""
    shapes = template.state_dict()
    state = packed.state_dict()
    copies: list[dict[str, torch.Tensor]] = [{} for _ in range(k)]
    for key, like in shapes.items():
        value = state[key]
        if value.dim() == 0:  # num_batches_tracked: shared
            parts = [value] * k
        elif key.endswith("fc.weight"):
            parts = list(value)
        else:
            parts = list(value.chunk(k))
        for i in range(k):
            copies[i][key] = parts[i].detach().clone().view_as(like)
    return copies


def packed_input(images: list[torch.Tensor]) -> torch.Tensor:
    """The K copies' batches (each B×3×H×W) as one B×3K×H×W input, copy k in channels 3k..3k+2."""
    return torch.cat(images, dim=1).contiguous(memory_format=torch.channels_last)


def packed_loss(logits: torch.Tensor, labels: list[torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over copies of each copy's mean cross-entropy: copy k's gradient is its own run's."""
    return sum(F.cross_entropy(logits[:, i].float(), y, label_smoothing=label_smoothing)
               for i, y in enumerate(labels))


def packable(precision: str, global_clipping: float | None = None, bn_groups: int = 1) -> str | None:
    """Why runs of these settings (their precision, gradient clipping norm and BatchNorm groups) cannot
    be packed, or None."""
    if global_clipping is not None:
        return "gradient clipping takes a global norm per run"
    if precision == "fp16":
        return "fp16 loss scaling skips steps per run"
    if bn_groups != 1:
        return "--bn_groups normalises groups of one run's batch, which the packed runs do not share"
    return None


def packed_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: list[torch.Tensor],
                labels: list[torch.Tensor], lr: float, label_smoothing: float, autocast) -> torch.Tensor:
    """One SGD update of all K runs at once; returns the summed (device) loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        logits = model(packed_input(images))
    loss = packed_loss(logits, labels, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
