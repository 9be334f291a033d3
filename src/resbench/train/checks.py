"""Whether a run's settings can run at all, checked before anything is written: each impossible
setting refused with one line naming the flag and the fix, where a run would otherwise fail
minutes in (a batch larger than the training split, fp16 on a CPU, a model that does not fit).

Above settings/ because the checks ask the dataset, the model and the device.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from resbench.data.facts import DatasetSpec, dataset_spec
from resbench.settings.config import (
    MAX_ITERATIONS,
    MAX_THREADS,
    ConfigError,
    TrainConfig,
    precision_for,
    resolve_device,
)


def validate_config(cfg: TrainConfig, processes: int | None = None, check_memory: bool = True) -> DatasetSpec:
    """Reject impossible settings up front, each with one line naming the flag and the fix. Returns the
    dataset's facts they were checked against, so that a run reads an imported set's dataset.json once
    for its checks.

    `processes`: the data-parallel processes it will train with (default: torchrun's world here);
    `check_memory`: whether this machine's memory is the one it will train in (not so for a sweep
    planned for a cluster)."""
    try:
        return check_settings(cfg, processes, check_memory)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_official_data(cfg: TrainConfig, spec: DatasetSpec) -> None:
    """Refuse a built-in set whose split sizes are not the official ones (a hand-made CIFAR10_x32 of
    41,000 / 200 images trained and was set beside the published figures), unless --allow_nonstandard.
    `spec`: the set's facts, as `validate_config` returns them."""
    from resbench.data.prepared import nonstandard_sizes
    from resbench.errors import DataError

    if cfg.allow_nonstandard or not (problem := nonstandard_sizes(spec, cfg.data_root)):
        return
    folder = Path(cfg.data_root) / cfg.data_name
    raise DataError(f"{folder} is not the official {cfg.data_name}: {problem}, so its figures would not be the "
                    f"published table's. Move it away and run `resbench data download {cfg.data_name}` for the "
                    "official set, import your images under a name of their own (`resbench data import NAME SRC`), "
                    "or pass --allow_nonstandard to train on it anyway")


def check_settings(cfg: TrainConfig, processes: int | None = None, check_memory: bool = True) -> DatasetSpec:
    from resbench.device import distributed, holding, hotpath, memory
    from resbench.models.resnet import architecture

    spec = dataset_spec(cfg.data_name, cfg.data_root)
    architecture(cfg.resnet_depth, cfg.resnet_width)  # raises on unsupported depth/width
    if not 0 <= cfg.seed < 2**63:
        raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1, got {cfg.seed}")
    positive = {"batch_size": cfg.batch_size, "optim_ni": cfg.optim_ni, "eval_every": cfg.eval_every}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if cfg.optim_ni > MAX_ITERATIONS:
        raise ValueError(f"--optim_ni must be at most {MAX_ITERATIONS:,} iterations, got {cfg.optim_ni}")
    if nul := [f"--{key}" for key, value in vars(cfg).items() if isinstance(value, str) and "\0" in value]:
        raise ValueError(f"{', '.join(nul)} holds a NUL character, which no path or name can hold")
    if not cfg.optim_lr > 0 or not math.isfinite(cfg.optim_lr):
        raise ValueError(f"--optim_lr must be a positive number, got {cfg.optim_lr}")
    if not 0 <= cfg.optim_momentum < 1:
        raise ValueError(f"--optim_momentum must be in [0, 1), got {cfg.optim_momentum}")
    if not 0 <= cfg.optim_weight_decay < 1:
        raise ValueError(f"--optim_weight_decay must be in [0, 1), got {cfg.optim_weight_decay}")
    if not 0 <= cfg.optim_label_smoothing < 1:
        raise ValueError(f"--optim_label_smoothing must be in [0, 1), got {cfg.optim_label_smoothing}")
    if cfg.optim_global_clipping is not None and not 0 < cfg.optim_global_clipping < math.inf:
        raise ValueError(f"--optim_global_clipping must be a positive finite number (or off), got "
                         f"{cfg.optim_global_clipping}")
    num_train = spec.num_train
    if cfg.batch_size > num_train:
        raise ValueError(f"--batch_size {cfg.batch_size} is larger than the training split of "
                         f"{cfg.data_name} ({num_train} images)")
    device = resolve_device(cfg.device)
    precision = precision_for(cfg.mixed_precision, device)
    world_size = processes or distributed.launched_world().world_size
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} does not split evenly over {world_size} processes; "
                         f"use a multiple of {world_size}")
    if check_memory:
        memory.check_training_fits(cfg.resnet_depth, cfg.resnet_width, spec.num_classes, spec.image_size,
                                   cfg.batch_size // world_size, precision, device)
    check_bn_groups(cfg, world_size)
    if cfg.sync_bn and device.type != "cuda":
        raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm); leave it off on CPU")
    hotpath.parse_compile(cfg.compile)
    if cfg.data_placement not in holding.PLACEMENTS:
        raise ValueError(f"--data_placement must be one of {', '.join(holding.PLACEMENTS)}, got {cfg.data_placement!r}")
    if cfg.threads is not None and not 1 <= cfg.threads <= MAX_THREADS:
        raise ValueError(f"--threads must be from 1 to {MAX_THREADS} (or auto), got {cfg.threads}")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'resbench[tensorboard]'")
    return spec


def check_bn_groups(cfg: TrainConfig, world_size: int) -> None:
    """--bn_groups splits each device's share of the batch evenly, and is per-device statistics, which
    --sync_bn (statistics over the global batch) is the opposite of."""
    if cfg.bn_groups < 1:
        raise ValueError(f"--bn_groups must be a positive integer, got {cfg.bn_groups}")
    share = cfg.batch_size // world_size
    if share % cfg.bn_groups:
        where = f"each of the {world_size} processes' {share} images" if world_size > 1 else f"{share} images"
        raise ValueError(f"--bn_groups {cfg.bn_groups} does not split {where} evenly; use a divisor of {share}")
    if cfg.bn_groups > 1 and cfg.sync_bn:
        raise ValueError("--bn_groups (per-device statistics over groups) and --sync_bn (statistics over the "
                         "global batch) contradict each other; use one")
