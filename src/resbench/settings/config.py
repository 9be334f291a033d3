"""The settings of a run: `TrainConfig` and its checks (the `resbench train` flags that fill it: `settings.flags`).

Everything that decides what a run is lives here, apart from the loop that runs it, so that
`train`, `evaluate`, `bench`, `sweep` and `cli` share one definition: the flag names are the
reference's, the defaults are the seed's command, and `default_run_name` tells runs apart.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resbench.errors import ResbenchError, printable
from resbench.runs.schema import PRECISION_OF_FLAG

if TYPE_CHECKING:  # torch is imported where a run is checked, so that `--help` stays fast
    import torch


@dataclass
class TrainConfig:
    """Every setting of a run, named as the reference's flags; defaults are the seed's command."""

    data_name: str = "CIFAR10_x32"
    resnet_depth: int = 20
    resnet_width: int = 1
    batch_size: int = 256
    optim_ni: int = 48_000
    optim_lr: float = 0.1
    optim_momentum: float = 0.9
    optim_weight_decay: float = 0.001
    optim_label_smoothing: float = 0.0
    optim_global_clipping: float | None = None  # max global gradient norm; None = no clipping
    seed: int = 42
    data_root: str = "./data"
    save: str | None = None  # run folder; None = runs/<data_name>/<default_run_name()>
    mixed_precision: str = "false"  # false | true (fp16 on CUDA, bf16 elsewhere) | fp16 | bf16
    eval_every: int = 1000
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: str = "auto"  # auto | true | false; auto: where the run repays the compile time
    sync_bn: bool = False  # data-parallel runs: BatchNorm statistics over the global batch
    deterministic: bool = False  # deterministic CUDA kernels (slower; changes the numbers slightly)
    tensorboard: bool = False  # also write the evaluation records as TensorBoard scalars
    threads: int | None = None  # CPU threads (torch.set_num_threads); None = torch's default
    mirror: str | None = None  # where to fetch a missing dataset's official archive from instead

    @property
    def precision(self) -> str:
        return precision_for(self.mixed_precision, resolve_device(self.device))


# Settings that change where and how a run computes, not what: a run may resume with them changed
# (a sweep resumed with another --jobs gives its runs another --threads). Two of them change the
# float rounding, though: measured on CPU after 20 steps of depth 8, 1 thread against 2 leaves the
# weights 1.6e-5 apart (relative L2), eager against compiled 9.6e-6 (benchmarks/thread_rounding.py).
# So a resumed run matches the uninterrupted one bit for bit only with the same threads and
# compile; changed, it is the same recipe to rounding, and the log says so.
RESUMABLE_CHANGES = {"data_root", "save", "device", "compile", "tensorboard", "threads", "mirror"}
ROUNDING_SETTINGS = ("threads", "compile")
# Counts from a file or a flag are bounded before use: torch.set_num_threads takes a C int, and a run
# of 10**30 iterations would start (its warm-up alone longer than any machine lives).
MAX_THREADS = 4096
MAX_ITERATIONS = 10**9


class ConfigError(ResbenchError, ValueError):
    """A setting is impossible; the message names the flag and what to use instead."""


# ---------------------------------------------------------------- checks

def validate_config(cfg: TrainConfig) -> None:
    """Reject impossible settings up front, each with one line naming the flag and the fix."""
    try:
        check_settings(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_settings(cfg: TrainConfig) -> None:
    from resbench.data import tensors as data
    from resbench.runtime import distributed, hotpath, limits
    from resbench.models import resnet as models  # torch: loaded when a run is checked, not for --help

    spec = data.dataset_spec(cfg.data_name)
    models.architecture(cfg.resnet_depth, cfg.resnet_width)  # raises on unsupported depth/width
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
    num_train = data.DATASETS[cfg.data_name].num_train
    if cfg.batch_size > num_train:
        raise ValueError(f"--batch_size {cfg.batch_size} is larger than the training split of "
                         f"{cfg.data_name} ({num_train} images)")
    device = resolve_device(cfg.device)
    precision = precision_for(cfg.mixed_precision, device)
    world_size = distributed.launched_world().world_size
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} does not split evenly over {world_size} processes; "
                         f"use a multiple of {world_size}")
    limits.check_training_fits(cfg.resnet_depth, cfg.resnet_width, spec.num_classes, spec.image_size,
                               cfg.batch_size // world_size, precision, device)
    if cfg.sync_bn and device.type != "cuda":
        raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm); leave it off on CPU")
    hotpath.parse_compile(cfg.compile)
    if cfg.threads is not None and not 1 <= cfg.threads <= MAX_THREADS:
        raise ValueError(f"--threads must be from 1 to {MAX_THREADS} (or auto), got {cfg.threads}")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'resbench[tensorboard]'")


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name} is not supported (resbench trains on CPUs and CUDA GPUs): "
                         "use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name} does not exist: this machine has {torch.cuda.device_count()} "
                         f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def precision_for(mixed_precision: str, device: torch.device) -> str:
    """fp32 | fp16 | bf16. `true` means fp16 with loss scaling on CUDA and bf16 elsewhere."""
    choice = mixed_precision.lower()
    if PRECISION_OF_FLAG.get(choice) == "fp32":
        return "fp32"
    if choice == "true":
        return "fp16" if device.type == "cuda" else "bf16"
    if choice == "fp16" and device.type != "cuda":
        raise ValueError("--mixed_precision fp16 needs a CUDA device; use bf16 (or false) on "
                         f"{device.type}")
    if choice in ("fp16", "bf16"):
        return choice
    raise ValueError(f"--mixed_precision must be false, true, fp16 or bf16, got {mixed_precision!r}")


# ---------------------------------------------------------------- run folders

def default_run_name(cfg: TrainConfig) -> str:
    """A folder name that tells the settings apart, e.g. R20x1-b256-i48k-lr0.1-wd0.001-s42."""
    ni = f"{cfg.optim_ni // 1000}k" if cfg.optim_ni % 1000 == 0 else str(cfg.optim_ni)
    name = (f"R{cfg.resnet_depth}x{cfg.resnet_width}-b{cfg.batch_size}-i{ni}-lr{cfg.optim_lr:g}"
            f"-wd{cfg.optim_weight_decay:g}-s{cfg.seed}")
    if cfg.optim_momentum != 0.9:
        name += f"-m{cfg.optim_momentum:g}"
    if cfg.optim_label_smoothing:
        name += f"-ls{cfg.optim_label_smoothing:g}"
    if cfg.optim_global_clipping is not None:
        name += f"-clip{cfg.optim_global_clipping:g}"
    if cfg.precision != "fp32":
        name += f"-{cfg.precision}"
    if cfg.deterministic:
        name += "-det"
    return name


def run_folder_of(cfg: TrainConfig) -> Path:
    return Path(cfg.save) if cfg.save else Path("runs") / cfg.data_name / default_run_name(cfg)


def canonical(key: str, value: Any) -> Any:
    """One spelling per setting: `--mixed_precision` false/fp32/FALSE are the same run."""
    if key == "mixed_precision" and isinstance(value, str):
        return "fp32" if PRECISION_OF_FLAG.get(value.lower()) == "fp32" else value.lower()
    return value


def check_same_config(saved: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    """Refuse to continue or reuse a run folder whose saved settings differ in anything that changes a number."""
    differing = [f"{key}: saved {saved.get(key)!r}, now {wanted.get(key)!r}"
                 for key in sorted(set(saved) | set(wanted))
                 if key not in RESUMABLE_CHANGES and canonical(key, saved.get(key)) != canonical(key, wanted.get(key))]
    if differing:
        from resbench.runs.schema import RunFolderError

        raise RunFolderError(
            f"{path} holds a run with other settings ({'; '.join(differing)}); "
            "use another --save folder, or the saved settings to resume it")


def rounding_changes(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings of ROUNDING_SETTINGS that differ between a saved run and its resumption, as flags."""
    return [f"--{key} {wanted.get(key)} (was {saved.get(key)})" for key in ROUNDING_SETTINGS
            if str(saved.get(key)).lower() != str(wanted.get(key)).lower()]


# JSON types a saved setting may have besides its field's own: configs saved before `--compile auto`
# existed hold a bool.
LEGACY_TYPES: dict[str, tuple[type, ...]] = {"compile": (bool,)}


def json_types(hint: Any) -> tuple[type, ...]:
    """The JSON value types of a dataclass field's type hint (an int is a valid float; `list[dict]` is a list)."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(t for kind in kinds for t in ((int, float) if kind is float else (typing.get_origin(kind) or kind,)))


def has_json_type(value: Any, hint: Any, also: tuple[type, ...] = ()) -> bool:
    """Whether a value read from JSON (or a checkpoint) is of the field's type; a bool is no number."""
    allowed = json_types(hint) + also
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def shown_value(value: Any) -> str:
    """A value read from a file, short and printable, for an error message."""
    text = printable(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


def check_saved_settings(saved: Any, path: Path) -> None:
    """Refuse a saved config.json that is not an object of known settings, each of its field's type,
    with one line naming the file and the setting (a hand-edited or foreign file would otherwise
    fail somewhere deep in the run, with a traceback)."""
    from resbench.runs.schema import RunFolderError

    if not isinstance(saved, dict):
        raise RunFolderError(f"{path} is not a resbench config.json (it holds a JSON {type(saved).__name__}, "
                              "not an object of settings); restore it, or use another --save folder")
    unknown = set(saved) - set(typing.get_type_hints(TrainConfig))
    if unknown:
        raise RunFolderError(f"{path} has unknown settings {sorted(map(str, unknown))[:5]}; was it written by resbench?")
    check_setting_types(saved, path, "restore the file, or use another --save folder")


@functools.cache
def setting_types() -> dict[str, Any]:
    """TrainConfig's type hints, evaluated once: `table`, `compare` and `plot` check every run folder's
    settings against them, and evaluating them takes a millisecond (10 s for 10,000 runs)."""
    return typing.get_type_hints(TrainConfig)


def check_setting_types(saved: dict[str, Any], path: Path, fix: str) -> None:
    """Refuse a saved setting of another type than its field's (`resnet_depth: null`), naming the
    file and the setting; settings this version does not know are left to the caller."""
    from resbench.runs.schema import RunFolderError

    hints = setting_types()
    for key, value in saved.items():
        if key in hints and not has_json_type(value, hints[key], LEGACY_TYPES.get(key, ())):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in json_types(hints[key]))
            raise RunFolderError(f"{path}: setting {key} is {shown_value(value)}, not {names}; {fix}")
