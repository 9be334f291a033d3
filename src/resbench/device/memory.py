"""Whether a network fits the device, checked before anything is built on it.

A width that is fine at depth 8 exhausts the memory at depth 152, so there is no single width
cap: the need is counted from the network `models.resnet` builds, on PyTorch's meta device
(shapes only, nothing allocated), and compared with the memory the device has. The need is a
lower bound, so that no run that could fit is refused: a run refused here would surely fail with
an allocator error, after a minute or an hour.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from resbench.models.resnet import count_parameters, resnet

# Bytes per parameter that training certainly holds on the device: the fp32 weight, its gradient
# and its momentum buffer. (The checkpoint writes and the optimiser's workspace come on top.)
TRAINING_BYTES_PER_PARAM = 12
INFERENCE_BYTES_PER_PARAM = 4
# Autograd keeps about one tensor per layer output for the backward pass; half of the layers'
# outputs is counted, so that the figure stays below what any precision or kernel choice needs.
KEPT_ACTIVATION_FRACTION = 0.5
GIB = 2**30


@functools.lru_cache(maxsize=64)
def network_size(depth: int, width: int, num_classes: int, image_size: int) -> tuple[int, int]:
    """(trainable parameters, layer-output elements per image) of `models.resnet(depth, width, ...)`.

    Built and run on the meta device: shapes are computed, no memory is allocated, so this
    follows models/resnet.py exactly whatever it builds (it takes about 0.05 s at depth 20, 2 s at 1202).
    """
    outputs = 0

    def count(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal outputs
        outputs += output.numel()

    with torch.device("meta"):
        model = resnet(depth, width, num_classes, image_size).eval()
        for module in model.modules():
            if not any(True for _ in module.children()):
                module.register_forward_hook(count)
        # The body only: the head runs in an autocast block, which the meta device does not have;
        # its output is one logit per class.
        model.stages(model.stem(torch.empty(1, 3, image_size, image_size)))
    return count_parameters(model), outputs + num_classes


def device_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes, what they are) the device can hold: a GPU's memory, or the host memory still available."""
    if device.type == "cuda":
        # The total, not what is free: asking for free memory would create a CUDA context here.
        return torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)} has"
    available = [value for value in (meminfo_available(), cgroup_available()) if value is not None]
    if available:
        return min(available), "this machine has available"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    except (ValueError, OSError, AttributeError):  # pragma: no cover - a platform without sysconf
        return None, ""


def meminfo_available() -> int | None:
    """Linux's estimate of the memory that can be used without swapping (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_available() -> int | None:
    """What a cgroup-v2 memory limit (a container, a SLURM job) leaves to this process, if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        return int(limit) - int(used) if limit != "max" else None
    except (OSError, ValueError):
        return None


def training_need(depth: int, width: int, num_classes: int, image_size: int, batch: int, precision: str) -> int:
    """Bytes a training step certainly needs on the device for this network and per-process batch."""
    params, outputs = network_size(depth, width, num_classes, image_size)
    element = 4 if precision == "fp32" else 2
    return TRAINING_BYTES_PER_PARAM * params + int(KEPT_ACTIVATION_FRACTION * outputs * batch * element)


def check_fits(need: int, device: torch.device, what: str, fix: str) -> None:
    """ValueError when `need` bytes are more than the device has; `what` names the run, `fix` the way out."""
    have, where = device_memory(device)
    if have is not None and need > have:
        raise ValueError(f"{what} needs at least {need / GIB:.1f} GiB, more than the {have / GIB:.1f} GiB "
                         f"{where}; {fix}")


def check_training_fits(depth: int, width: int, num_classes: int, image_size: int, batch: int,
                        precision: str, device: torch.device) -> None:
    params, _ = network_size(depth, width, num_classes, image_size)
    check_fits(training_need(depth, width, num_classes, image_size, batch, precision), device,
               f"training --resnet_depth {depth} --resnet_width {width} ({params:,} parameters, with gradients, "
               f"momentum and the activations of {batch} images per process)",
               "train it where there is more memory (a GPU node; a sweep for a cluster, --launcher slurm|ray, plans "
               "without this machine's), or with a smaller --resnet_width, --resnet_depth or --batch_size (another "
               "run than the recipe's)")


def check_inference_fits(depth: int, width: int, num_classes: int, image_size: int, device: torch.device) -> None:
    params, _ = network_size(depth, width, num_classes, image_size)
    check_fits(INFERENCE_BYTES_PER_PARAM * params, device,
               f"a depth-{depth} width-{width} network ({params:,} parameters)",
               "evaluate it on a device with more memory")
