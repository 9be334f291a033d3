"""Where a run's data lives while it trains, decided before the first step and said in one line.

The evaluation splits and every label always live on the training device (ImageNet's 50,000 validation
images are 0.15 GB at 32 px, 0.61 GB at 64 px). The training images go there too where they fit beside
training (`--data_placement device`): copied from their memory-mapped file in chunks, so no process
holds a second copy in host memory on the way to its GPU. Where they do not fit (ImageNet1k_x64's 15.7
GB on a 16 GB GPU, or on a CPU box short of memory) they stay in the file and stream to the device
(`--data_placement stream`, `device.streaming`), batch by batch ahead of the step. Both give the same
batches bit for bit; `auto` picks the first where `fits` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from resbench.data.batches import TrainBatches
from resbench.data.prepared import Splits, load_splits, to_tensor
from resbench.device import memory
from resbench.device.distributed import World
from resbench.device.streaming import AHEAD, StreamedBatches
from resbench.errors import ResbenchError
from resbench.settings.config import TrainConfig

PLACEMENTS = ("auto", "device", "stream")
# `auto` holds the training images on the device only where they, the evaluation splits and twice the
# memory a step certainly needs (`memory.training_need`, a lower bound: the real need of activations and
# workspace is above it) fit in what the device has. A wrong guess costs speed, never figures: the flag
# overrides it either way.
STEP_NEED_FACTOR = 2


@dataclass
class HeldData:
    """A run's splits (the training images where `placement` put them), its batches, and the log's line."""

    splits: Splits
    batches: TrainBatches
    placement: str  # "device" or "stream"
    statement: str


def hold_data(cfg: TrainConfig, device: torch.device, world: World, precision: str) -> HeldData:
    """Load the run's dataset and put its training images on the device or stream them (the module doc)."""
    have, where = process_memory(device)
    splits = load_splits(cfg.data_name, cfg.data_root, device)
    spec = splits.spec  # the facts the arrays were read with
    train, held = nbytes(splits.train_images), eval_bytes(splits)
    step_need = STEP_NEED_FACTOR * memory.training_need(cfg.resnet_depth, cfg.resnet_width, spec.num_classes,
                                                        spec.image_size, cfg.batch_size // world.world_size, precision)
    placement = cfg.data_placement
    if placement == "auto":
        placement = "device" if have is None or train + held + step_need <= have else "stream"
    validation = " (validation = test)" if spec.val_is_test else ""
    if placement == "device":
        splits.train_images = images_on(splits.train_images, device)
        batches = TrainBatches(splits.train_images, splits.train_labels, cfg.batch_size, cfg.seed, world.rank,
                               world.world_size)
        return HeldData(splits, batches, placement,
                        f"data: {spec.name} held on {device} as uint8, {size(train + held)}: {size(train)} of "
                        f"training images, {size(held)} of evaluation images{validation}")
    batches = StreamedBatches(splits.train_images, splits.train_labels, cfg.batch_size, cfg.seed, world.rank,
                              world.world_size, device)
    why = (f"they do not fit beside training: {size(train + held)} of images and {size(step_need)} for the step, "
           f"{where} {size(have)}" if cfg.data_placement == "auto" and have is not None else "--data_placement stream")
    buffers = f"{'pinned ' if device.type == 'cuda' else ''}host buffers of {size(batches.buffer_bytes)}"
    return HeldData(splits, batches, placement,
                    f"data: {spec.name}'s {size(train)} of training images stream from their memory-mapped file "
                    f"to {device}, {AHEAD} batches ahead of the step ({buffers}; {why}); {size(held)} of "
                    f"evaluation images{validation} held on {device}")


def process_memory(device: torch.device) -> tuple[int | None, str]:
    """`memory.device_memory` as one process may count on it: on a CPU, the processes of one machine
    (torchrun's LOCAL_WORLD_SIZE) each hold their own copy of the data in the memory they share."""
    have, where = memory.device_memory(device)
    if have is not None and device.type == "cpu":
        have //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return have, where


def images_on(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The training images copied onto the device from their file, or one line saying they do not fit."""
    try:
        return to_tensor(images.numpy(), device)
    except torch.OutOfMemoryError:
        raise ResbenchError(f"the {size(nbytes(images))} of training images do not fit on {device} beside "
                            "the run; use --data_placement stream (or auto)") from None


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def eval_bytes(splits: Splits) -> int:
    """The evaluation images' bytes, a split counted once where validation is the test set."""
    tensors = {id(t): t for t in (splits.val_images, splits.test_images)}
    return sum(map(nbytes, tensors.values()))


def size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
