"""The published results (seed-results.md), parsed from the copy of seed-runs.tsv shipped in the package.

One table serves three commands: `sweep --grid seed` runs its rows, `table` orders its rows
like the seed and `table --compare reference` / `plot` put the published figures beside ours.
Keeping the figures in one data file (not literals in code) means a correction is one edit.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# Row order inside each dataset table of seed-results.md; unknown configurations come after.
SEED_CONFIG_ORDER: tuple[tuple[int, int], ...] = ((20, 1), (20, 2), (20, 4), (32, 1), (44, 1), (56, 1), (18, 1))
PRECISION_ORDER: tuple[str, ...] = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ReferenceRow:
    """One published result: a (dataset, depth, width, precision) configuration and its figures."""

    data_name: str
    depth: int
    width: int
    precision: str
    params: int
    val_acc: float
    tst_acc: float
    tst_nll: float
    wall_min: float

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.data_name, self.depth, self.width, self.precision)


@lru_cache(maxsize=1)
def reference_rows() -> tuple[ReferenceRow, ...]:
    """All published rows, in the seed's order (dataset tables top to bottom)."""
    text = resources.files("resbench").joinpath("reference_results.tsv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(
        ReferenceRow(
            data_name=rec["data_name"], depth=int(rec["depth"]), width=int(rec["width"]),
            precision=rec["precision"], params=int(rec["params"]), val_acc=float(rec["val_acc"]),
            tst_acc=float(rec["tst_acc"]), tst_nll=float(rec["tst_nll"]), wall_min=float(rec["wall_min"]),
        )
        for rec in csv.DictReader(lines, delimiter="\t")
    )


def reference_lookup() -> dict[tuple[str, int, int, str], ReferenceRow]:
    """Published rows by (data_name, depth, width, precision)."""
    return {row.key: row for row in reference_rows()}


def seed_datasets() -> list[str]:
    """Dataset names in the order of the seed's tables."""
    return list(dict.fromkeys(row.data_name for row in reference_rows()))


def _position(value, order) -> tuple[int, object]:
    """Sort key: known values by their place in `order`, unknown ones after, among themselves sorted."""
    return (order.index(value), 0) if value in order else (len(order), value)


def dataset_sort_key(data_name: str) -> tuple[int, object]:
    return _position(data_name, seed_datasets())


def config_sort_key(depth: int, width: int, precision: str) -> tuple:
    """Seed order: 20x1, 20x2, 20x4, 32, 44, 56, 18, then unknown depths/widths; fp32 before fp16."""
    return (*_position((depth, width), SEED_CONFIG_ORDER), *_position(precision, PRECISION_ORDER))
