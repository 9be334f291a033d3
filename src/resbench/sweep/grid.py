"""A sweep's grid: the ready ones (`seed`: the 26 rows of seed-results.md; `wd`: the reference's
weight-decay sweep; `imagenet`: the six rows of imagenet-x.md) or a TOML file of lists, each made the
train flags of its runs.

A grid file is read as data: its keys are train settings or `precision`, each value is checked as
its flag would check it, and the grid's size is known before anything is planned.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

from resbench.errors import ResbenchError, reason
from resbench.results.reference import imagenet_rows, reference_rows, reference_weight_decays
from resbench.settings.config import PRECISION_FLAGS, TrainConfig
from resbench.settings.flags import file_value, parse_toml, read_settings_text

# A grid file's lists: `precision` (fp32/fp16/bf16, as the seed names its rows: fp16 is mixed precision,
# which the trainer runs as bf16 where fp16 is unsupported) and any train setting.
GRID_AXES = ("data_name", "resnet_depth", "resnet_width", "precision", "seed",
             *(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("data_name", "resnet_depth",
                                                                                 "resnet_width", "seed", "save")))
READY_GRIDS = {"seed": "the 26 published rows of docs/reference/seed-results.md, the tables this project reproduces",
               "wd": "the reference's weight-decay sweep: the 26 rows at each weight decay it ran, 1e-4, 3e-4, 1e-3 "
                     "and 3e-3 (104 runs)",
               "imagenet": "the six ImageNet1k_x32/_x64 rows of docs/reference/imagenet-x.md, each with the "
                           "reference's per-device BatchNorm (2 or 4 GPUs)"}
# The most runs one sweep plans: every run is checked before the first starts, so a grid file of a
# few lines whose product is 10**9 runs is refused from its axes' lengths, never enumerated.
MAX_RUNS = 10_000


def seed_grid() -> list[list[str]]:
    """The 26 rows of seed-results.md, as train flags (trainer defaults give the seed's recipe)."""
    return [["--data_name", row.data_name, "--resnet_depth", str(row.depth), "--resnet_width", str(row.width),
             *PRECISION_FLAGS[row.precision]] for row in reference_rows()]


def imagenet_grid(processes: int = 1) -> list[list[str]]:
    """The six ImageNet rows as train flags, each run on `processes` devices (torchrun) with the BatchNorm
    statistics of the reference's 2 (32 px) or 4 (64 px) GPUs: `--bn_groups` makes up the devices a run has
    fewer of (one device: 2 or 4 groups), so that every BatchNorm normalises 512 or 256 images, as there."""
    grid = []
    for row in imagenet_rows():
        if row.devices % processes:
            divisors = " or ".join(str(n) for n in range(1, row.devices + 1) if row.devices % n == 0)
            raise ResbenchError(f"the {row.data_name} rows ran on {row.devices} GPUs ({row.batch_size // row.devices} "
                                f"images per BatchNorm); {processes} processes per run cannot split them so: use "
                                f"--gpus_per_run {divisors}, or a grid file of your own")
        groups = row.devices // processes
        grid.append(["--data_name", row.data_name, "--resnet_depth", str(row.depth), "--resnet_width", str(row.width),
                     *PRECISION_FLAGS[row.precision], "--batch_size", str(row.batch_size), "--optim_ni",
                     str(row.optim_ni), "--optim_lr", f"{row.optim_lr:g}", "--optim_weight_decay",
                     f"{row.weight_decay:g}", *(["--bn_groups", str(groups)] if groups > 1 else [])])
    return grid


def weight_decay_grid() -> list[list[str]]:
    """The reference's weight-decay sweep: every row of the seed grid at each weight decay it logged."""
    return [[*row, "--optim_weight_decay", f"{wd:g}"] for row in seed_grid() for wd in reference_weight_decays()]


def with_seeds(grid: list[list[str]], seeds: list[int] | None, source: str) -> list[list[str]]:
    """Each grid point once per seed of `--seeds` (a grid that sets seeds itself is refused: which would win?)."""
    if not seeds:
        return grid
    if any("--seed" in point for point in grid):
        raise ResbenchError(f"{source} sets seeds itself (a seed list or flag); drop it or --seeds")
    check_run_count(len(grid) * len(seeds), source)
    return [[*point, "--seed", str(seed)] for point in grid for seed in seeds]


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def check_run_count(count: int, source: str) -> None:
    if count > MAX_RUNS:
        raise ResbenchError(f"{source} has {count:,} runs, more than the {MAX_RUNS:,} one sweep plans; "
                            "split it into several grids")


def grid_value(key: str, value: object, path: Path) -> str:
    """One value of a grid axis or of its [flags] as a train flag's text: a list inside an axis or a
    table is refused (its text would become a setting, `data_root = [["a"]]` a folder named "['a']")."""
    try:
        return file_value(value)
    except TypeError as exc:
        raise ResbenchError(f"grid {path}: {key} holds {exc}; give a value, or for an axis a list of "
                            "values") from None


def toml_grid(path: Path) -> list[list[str]]:
    """The cartesian product of a user grid file's axes, each with the `[flags]` table appended."""
    try:
        spec = parse_toml(read_settings_text(Path(path)))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOML's decode errors are ValueErrors
        raise ResbenchError(f"cannot read grid {path}: {reason(exc)}") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser recurses
        raise ResbenchError(f"cannot read grid {path}: its values are nested too deeply") from None
    fixed = spec.pop("flags", {})
    if not isinstance(fixed, dict):
        raise ResbenchError(f"grid {path}: flags must be a table: a [flags] line followed by name = value lines")
    unknown = set(spec) - set(GRID_AXES)
    if unknown:
        raise ResbenchError(f"grid {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                            "allowed: precision, any train setting (data_name, resnet_depth, seed, optim_lr, ...) "
                            "and a [flags] table")
    if "data_name" not in spec:
        raise ResbenchError(f"grid {path}: data_name is required")
    axes = {key: as_list(spec[key]) for key in GRID_AXES if key in spec}  # in GRID_AXES order
    if empty := [key for key, values in axes.items() if not values]:
        raise ResbenchError(f"grid {path}: {', '.join(empty)} is an empty list, so the grid has no runs")
    bad = [value for value in axes.get("precision", []) if not isinstance(value, str) or value not in PRECISION_FLAGS]
    if bad:
        raise ResbenchError(f"grid {path}: precision must be one of {', '.join(PRECISION_FLAGS)}, not {bad[0]!r}")
    check_run_count(math.prod(map(len, axes.values())), f"grid {path}")
    fixed_flags = [part for key, value in fixed.items() for part in (f"--{key}", grid_value(key, value, path))]
    texts = {key: values if key == "precision" else [grid_value(key, value, path) for value in values]
             for key, values in axes.items()}
    return [axis_flags(dict(zip(texts, values))) + fixed_flags for values in itertools.product(*texts.values())]


def axis_flags(point: dict) -> list[str]:
    """Train flags for one point of the grid (its values already as the flags' text)."""
    flags = []
    for key, value in point.items():
        flags += PRECISION_FLAGS[value] if key == "precision" else [f"--{key}", value]
    return flags


def load_grid(grid: str, processes: int = 1) -> list[list[str]]:
    """The grid's train flags; `processes`: the data-parallel processes each run gets (the imagenet grid's
    --bn_groups depend on them)."""
    ready = {"seed": seed_grid, "wd": weight_decay_grid, "imagenet": lambda: imagenet_grid(processes)}
    return ready.get(grid, lambda: toml_grid(Path(grid)))()
