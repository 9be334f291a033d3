"""The settings of a run: `TrainConfig` (the `resbench train` flags that fill it: `settings.flags`).

The floor every other package stands on: plain values with defaults, importing nothing of resbench
but errors, so that `train`, `evaluate`, `bench`, `sweep`, `runs` and `cli` share one definition.
The flag names are the reference's, the defaults are the seed's command, `default_run_name`
tells runs apart, and `flag_value` spells a value as the flags do, for the run folder's log and the
tables, which never parse flags. Whether a run can run is checked above, in `train.checks`; whether
a saved config.json is one, in `runs.reader`; a run's settings from flags and files are assembled
in `train.assemble`.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resbench.console import printable
from resbench.errors import ResbenchError

if TYPE_CHECKING:  # torch is imported where a device is resolved, so that `--help` stays fast
    import torch


# How a run's precision is spelled: `--mixed_precision` as asked -> the precision it trains in where
# the device is not known (an older config.json without "resolved"); `true` is fp16 (on a CPU it ran
# as bf16, which matches the same reference run).
PRECISION_OF_FLAG = {"false": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "true": "fp16"}
# The train flags that ask for each precision (a sweep grid's `precision` axis; fp32 is the default).
PRECISION_FLAGS = {"fp32": [], "fp16": ["--mixed_precision", "true"], "bf16": ["--mixed_precision", "bf16"]}


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
    bn_groups: int = 1  # BatchNorm statistics over this many groups of each device's batch, as on as many devices
    deterministic: bool = False  # deterministic CUDA kernels (slower; changes the numbers slightly)
    tensorboard: bool = False  # also write the evaluation records as TensorBoard scalars
    threads: int | None = None  # CPU threads (torch.set_num_threads); None = torch's default
    mirror: str | None = None  # where to fetch a missing dataset's official archive from instead
    data_placement: str = "auto"  # auto | device | stream: where the training images are held (device.holding)
    allow_nonstandard: bool = False  # train on a built-in set whose split sizes are not the official ones

    @property
    def precision(self) -> str:
        return precision_for(self.mixed_precision, resolve_device(self.device))


# Every setting's default: what a run folder saved before the setting existed ran with.
SETTING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}

# Settings that change where and how a run computes, not what: a run may resume with them changed
# (a sweep resumed with another --jobs gives its runs another --threads). Two of them change the
# float rounding, though: measured on CPU after 20 steps of depth 8, 1 thread against 2 leaves the
# weights 1.6e-5 apart (relative L2), eager against compiled 9.6e-6 (benchmarks/thread_rounding.py).
# So a resumed run matches the uninterrupted one bit for bit only with the same threads and
# compile; changed, it is the same recipe to rounding, and the log says so.
RESUMABLE_CHANGES = {"data_root", "save", "device", "compile", "tensorboard", "threads", "mirror", "data_placement",
                     "allow_nonstandard"}
ROUNDING_SETTINGS = ("threads", "compile")
# Counts from a file or a flag are bounded before use: torch.set_num_threads takes a C int, and a run
# of 10**30 iterations would start (its warm-up alone longer than any machine lives).
MAX_THREADS = 4096
MAX_ITERATIONS = 10**9

class ConfigError(ResbenchError, ValueError):
    """A setting is impossible; the message names the flag and what to use instead."""


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


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The recipe's schedule: linear warm-up from 0 over floor(0.1·ni) steps, then cosine to 0 over
    floor(0.9·ni) steps. Here, with the settings, so that the trainer and `resbench plot` (which draws
    a run's schedule from its config.json) use the one function.

    `step` counts updates from 0, as optax does: the first update uses lr 0.
    """
    warmup, decay = int(0.1 * cfg.optim_ni), int(0.9 * cfg.optim_ni)
    if step < warmup:
        return cfg.optim_lr * step / warmup
    progress = min(step - warmup, decay) / max(decay, 1)
    return cfg.optim_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- run folders

def named_precision(cfg: TrainConfig) -> str:
    """The precision a run's folder name says: the one asked for, read without the device at hand, so
    that a sweep planned on a CPU node names its folders as the GPU nodes that train them will.
    `--mixed_precision true` is the seed's fp16 row, unless the device asked for is a CPU (bf16 there)."""
    choice = canonical("mixed_precision", cfg.mixed_precision)
    if choice == "true":
        return "bf16" if cfg.device.lower().startswith("cpu") else "fp16"
    return PRECISION_OF_FLAG.get(choice, choice)


def default_run_name(cfg: TrainConfig, precision: str | None = None) -> str:
    """A folder name that tells the settings apart, e.g. R20x1-b256-i48k-lr0.1-wd0.001-s42 (`precision`:
    the one the name says, `named_precision` by default)."""
    ni = f"{cfg.optim_ni // 1000}k" if cfg.optim_ni % 1000 == 0 else str(cfg.optim_ni)
    name = (f"R{cfg.resnet_depth}x{cfg.resnet_width}-b{cfg.batch_size}-i{ni}-lr{cfg.optim_lr:g}"
            f"-wd{cfg.optim_weight_decay:g}-s{cfg.seed}")
    if cfg.optim_momentum != 0.9:
        name += f"-m{cfg.optim_momentum:g}"
    if cfg.optim_label_smoothing:
        name += f"-ls{cfg.optim_label_smoothing:g}"
    if cfg.optim_global_clipping is not None:
        name += f"-clip{cfg.optim_global_clipping:g}"
    precision = precision or named_precision(cfg)
    if precision != "fp32":
        name += f"-{precision}"
    if cfg.bn_groups != 1:
        name += f"-bng{cfg.bn_groups}"
    if cfg.deterministic:
        name += "-det"
    return name


DEFAULT_RUNS_DIR = Path("runs")


def run_folder_of(cfg: TrainConfig, runs_dir: Path = DEFAULT_RUNS_DIR) -> Path:
    """--save, or <runs_dir>/<data_name>/<default_run_name>. A run named when names said the precision
    trained in (`--mixed_precision true --device auto` on a CPU: -bf16, now -fp16) keeps its folder."""
    if cfg.save:
        return Path(cfg.save)
    folder = Path(runs_dir) / cfg.data_name
    named = folder / default_run_name(cfg)
    if canonical("mixed_precision", cfg.mixed_precision) != "true" or cfg.device != "auto" or named.exists():
        return named
    earlier = folder / default_run_name(cfg, cfg.precision)
    return earlier if earlier.exists() else named


def named_folder_of(cfg: TrainConfig) -> Path:
    """The folder the run's folder was named by: --save itself, or the default runs folder, below which the
    run's folder is derived (`<data_name>/<run name>`) and every level must be a folder of the tool's own."""
    return Path(cfg.save) if cfg.save else DEFAULT_RUNS_DIR


def canonical(key: str, value: Any) -> Any:
    """One spelling per setting: `--mixed_precision` false/fp32/FALSE are the same run."""
    if key == "mixed_precision" and isinstance(value, str):
        return "fp32" if PRECISION_OF_FLAG.get(value.lower()) == "fp32" else value.lower()
    return value


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


def flag_value(value: object) -> str:
    """A value (from TOML, JSON or a TrainConfig) as the train flags spell it: booleans true/false,
    None (a setting not used, e.g. no clipping) off."""
    if value is None:
        return "off"
    return str(value).lower() if isinstance(value, bool) else str(value)


def shown_value(value: Any) -> str:
    """A value read from a file, short and printable, for an error message."""
    text = printable(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def setting_types() -> dict[str, Any]:
    """TrainConfig's type hints, evaluated once: `table`, `compare` and `plot` check every run folder's
    settings against them, and evaluating them takes a millisecond (10 s for 10,000 runs)."""
    return typing.get_type_hints(TrainConfig)
