"""Residual networks for 32×32 and 64×64 images, initialised exactly as the reference.

Two families share one implementation:
- CIFAR-style (depth 6n+2: 20, 32, 44, 56, 110, ...): 16 base planes, 3 stages of n BasicBlocks.
- ImageNet-style (depth 18, 34, 50, 101, 152): 64 base planes, 4 stages.
Both use a single 3×3 stride-1 stem with no max-pool, because the inputs are tiny.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Normalisation constants of the reference (applied inside the model on [0, 1] images).
IMAGE_MEAN = (0.48145466, 0.45782750, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# Bounds on the settings, so that a typo cannot hang the program building a network of millions
# of layers or overflow the sizes of its tensors. ResNet-1202 (6·200+2) is the deepest network of
# He et al. on CIFAR. No width near 1024 fits any machine's memory at any depth (depth 8 at
# width 1024 has 8e10 parameters); what fits is checked against the device (`limits`).
MAX_DEPTH = 1202
MAX_WIDTH = 1024
IMAGE_SIZES = (32, 64)  # the inputs the networks are built for (data.facts.IMPORT_SIZES, a floor beside, says so too)

IMAGENET_STYLE_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax's `he_normal`: a truncated normal (±2σ) rescaled so the variance is exactly 2/fan_in.

    PyTorch's kaiming_normal_ is untruncated; the reference (JAX) truncates, so we follow it.
    """
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def conv_bn(in_planes: int, out_planes: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Both 3×3 convolutions have `planes · width` channels."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, width: int = 1):
        super().__init__()
        self.out_planes = planes * width
        self.conv1 = conv_bn(in_planes, self.out_planes, 3, stride)
        self.conv2 = conv_bn(self.out_planes, self.out_planes, 3)
        self.shortcut = shortcut(in_planes, self.out_planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1. The width widens the inner two only: the block's output has
    4 · `planes` channels whatever the width, as in the reference (and torchvision's wide_resnet50_2)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, width: int = 1):
        super().__init__()
        inner, self.out_planes = planes * width, planes * self.expansion
        self.conv1 = conv_bn(in_planes, inner, 1)
        self.conv2 = conv_bn(inner, inner, 3, stride)
        self.conv3 = conv_bn(inner, self.out_planes, 1)
        self.shortcut = shortcut(in_planes, self.out_planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        out = torch.relu(self.conv2(out))
        return torch.relu(self.conv3(out) + self.shortcut(x))


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1×1 projection with BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return conv_bn(in_planes, out_planes, 1, stride)


class ResNet(nn.Module):
    """Stem → stages of residual blocks → global average pool → bias-free linear head.

    Takes float images in [0, 1], NCHW, and normalises them itself, so that data can stay as raw
    uint8 on the device until the last moment.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks_per_stage: tuple[int, ...],
                 base_planes: int, width: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        # The stem has `base_planes` channels whatever the width (as in the reference), so for
        # width > 1 the first block of stage 1 widens the features through a projection shortcut.
        self.stem = nn.Sequential(conv_bn(3, base_planes, 3), nn.ReLU(inplace=True))
        stages, in_planes = [], base_planes
        for i, num_blocks in enumerate(blocks_per_stage):
            strides = [1 if i == 0 else 2] + [1] * (num_blocks - 1)
            stage = []
            for stride in strides:
                stage.append(block(in_planes, base_planes * 2**i, stride, width))
                in_planes = stage[-1].out_planes
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                he_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_(module.last_bn().weight)  # zero-init residual: each block starts as identity
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.stages(self.stem(x))
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        # The head in its weights' precision (float32) under any autocast, as the reference's: its Dense
        # layer promotes the float16 features to its float32 weights and yields float32 logits.
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(features.to(self.fc.weight.dtype))


def valid_depths() -> str:
    return f"6n+2 up to {MAX_DEPTH} (20, 32, 44, 56, 110, ...) or " + ", ".join(map(str, IMAGENET_STYLE_DEPTHS))


def resnet(depth: int, width: int = 1, num_classes: int = 10, image_size: int = 32) -> ResNet:
    """Build the reference ResNet of `depth` and channel multiplier `width`.

    `image_size` is accepted for 32 and 64; the architecture is the same for both (the stem has no
    downsampling and the head pools globally), it only guards against unsupported inputs.
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be 32 or 64, got {image_size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    block, blocks_per_stage, base_planes = architecture(depth, width)
    return ResNet(block, blocks_per_stage, base_planes, width, num_classes)


def architecture(depth: int, width: int = 1) -> tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...], int]:
    """(block type, blocks per stage, base planes) of a depth; raises ValueError for unsupported ones.

    Cheap, so settings can be checked before any network is built.
    """
    if width < 1:
        raise ValueError(f"resnet width must be a positive integer, got {width}")
    if width > MAX_WIDTH:
        raise ValueError(f"resnet width {width} is out of range: use 1 to {MAX_WIDTH}")
    if depth > MAX_DEPTH:
        raise ValueError(f"resnet depth {depth} is out of range: use {valid_depths()}")
    if depth in IMAGENET_STYLE_DEPTHS:
        kind, blocks = IMAGENET_STYLE_DEPTHS[depth]
        return (BasicBlock if kind == "basic" else Bottleneck), blocks, 64
    if depth >= 8 and (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
        return BasicBlock, (n, n, n), 16
    raise ValueError(f"unsupported resnet depth {depth}: use {valid_depths()}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
