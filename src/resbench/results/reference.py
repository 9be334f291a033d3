"""The reference's figures, shipped in the package as data, in four files:

- `reference_results.tsv`: the published results table (seed-results.md, a copy of seed-runs.tsv):
  `sweep --grid seed` runs its rows, `table` orders its rows like the seed and
  `table --compare reference` / `plot` put the published figures beside ours.
- `reference_curves.tsv.gz`: the reference's own training logs, parsed (reference-curves.tsv): one
  line per evaluation of its 104 runs (the table's 26 plus its weight-decay sweep), which
  `compare` and `plot --compare reference` put beside our curves, and `sweep --grid wd` reruns.
  `compare`'s noise model is calibrated on these runs only.
- `imagenet_results.tsv` and `imagenet_curves.tsv.gz`: the same for the six ImageNet1k_x32/_x64 rows
  its README published later, and their seven logs (docs/reference/imagenet-x.md): other settings
  (batch 1,024, 128,000 iterations, lr 0.4, weight decay 1e-4) on 2 or 4 GPUs; `sweep --grid imagenet`
  runs them.

Keeping the figures in data files (not literals in code) means a correction is one edit.
"""

from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

# Row order inside each dataset table of seed-results.md (then imagenet-x.md's); unknown configurations come after.
SEED_CONFIG_ORDER: tuple[tuple[int, int], ...] = ((20, 1), (20, 2), (20, 4), (32, 1), (44, 1), (56, 1), (18, 1),
                                                  (34, 1), (50, 1))
PRECISION_ORDER: tuple[str, ...] = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ReferenceRow:
    """One published result: a (dataset, depth, width, precision) configuration, its figures, and the
    settings and devices it was trained with (the seed's: batch 256, 48k iterations, lr 0.1, wd 1e-3,
    one GPU)."""

    data_name: str
    depth: int
    width: int
    precision: str
    params: int
    val_acc: float
    tst_acc: float
    tst_nll: float
    wall_min: float  # on `devices` GPUs
    devices: int = 1
    weight_decay: float = 0.001
    batch_size: int = 256
    optim_ni: int = 48_000
    optim_lr: float = 0.1

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.data_name, self.depth, self.width, self.precision)

    def minutes_for(self, iterations: int, batch_size: int) -> float:
        """Its wall time scaled to `iterations` steps of `batch_size` images (on its `devices` GPUs)."""
        return self.wall_min * iterations * batch_size / (self.optim_ni * self.batch_size)


def published_row(data_name: str, depth: int, width: int, precision: str) -> ReferenceRow | None:
    """The published row of a configuration: `precision` fp32, fp16 or bf16 (the reference's fp16 rows are
    mixed precision: bf16 where fp16 is slow)."""
    return reference_lookup().get((data_name, depth, width, "fp32" if precision == "fp32" else "fp16"))


ROW_TYPES = {"depth": int, "width": int, "params": int, "val_acc": float, "tst_acc": float, "tst_nll": float,
             "wall_min": float, "devices": int, "weight_decay": float, "batch_size": int, "optim_ni": int,
             "optim_lr": float}


def read_rows(filename: str) -> tuple[ReferenceRow, ...]:
    """A shipped table of published rows; a column it lacks takes ReferenceRow's default (the seed's)."""
    text = resources.files("resbench.results").joinpath(filename).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    fields = set(ReferenceRow.__dataclass_fields__)
    return tuple(ReferenceRow(**{key: ROW_TYPES.get(key, str)(value) for key, value in rec.items() if key in fields})
                 for rec in csv.DictReader(lines, delimiter="\t"))


@lru_cache(maxsize=1)
def reference_rows() -> tuple[ReferenceRow, ...]:
    """The seed's 26 published rows, in its order (dataset tables top to bottom)."""
    return read_rows("reference_results.tsv")


@lru_cache(maxsize=1)
def imagenet_rows() -> tuple[ReferenceRow, ...]:
    """The six ImageNet1k_x32/_x64 rows of the reference's later README (imagenet-x.md), in its order."""
    return read_rows("imagenet_results.tsv")


def published_rows() -> tuple[ReferenceRow, ...]:
    return reference_rows() + imagenet_rows()


def reference_lookup() -> dict[tuple[str, int, int, str], ReferenceRow]:
    """Published rows (the seed's and the ImageNet ones) by (data_name, depth, width, precision)."""
    return {row.key: row for row in published_rows()}


def seed_datasets() -> list[str]:
    """Dataset names in the order of the published tables (the seed's, then ImageNet's)."""
    return list(dict.fromkeys(row.data_name for row in published_rows()))


def _position(value, order) -> tuple[int, object]:
    """Sort key: known values by their place in `order`, unknown ones after, among themselves sorted."""
    return (order.index(value), 0) if value in order else (len(order), value)


def dataset_sort_key(data_name: str) -> tuple[int, object]:
    return _position(data_name, seed_datasets())


def shape_sort_key(depth: int, width: int) -> tuple[int, object]:
    """Seed order: 20x1, 20x2, 20x4, 32, 44, 56, 18, then unknown depths/widths."""
    return _position((depth, width), SEED_CONFIG_ORDER)


def precision_sort_key(precision: str) -> tuple[int, object]:
    """fp32, fp16, bf16, then others."""
    return _position(precision, PRECISION_ORDER)



# ---------------------------------------------------------------- the reference's training logs

# The settings every run of the seed's logs shares (the trainer's defaults; the ImageNet runs have their own
# batch, iterations and lr); a run with other values has no reference run to compare with.
REFERENCE_SETTINGS: dict[str, Any] = {"batch_size": 256, "optim_ni": 48_000, "optim_lr": 0.1, "optim_momentum": 0.9,
                                      "optim_label_smoothing": 0.0, "optim_global_clipping": None}
SEED_CURVES, IMAGENET_CURVES = "reference_curves.tsv.gz", "imagenet_curves.tsv.gz"
DEFAULT_WEIGHT_DECAY = 0.001  # the seed's, and the trainer's default
CURVE_FIELDS = ("trn_loss", "trn_nll", "w_norm", "g_norm", "trn_lr", "val_acc", "val_nll", "best_val_acc",
                "tst_acc", "tst_nll", "elapsed_s")
# The reference's "fp16" is mixed precision: float16 on GPUs, bfloat16 where float16 is slow (recipe.md),
# so our bf16 runs are compared with its fp16 runs.
REFERENCE_PRECISION = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp16"}


@dataclass(frozen=True)
class ReferenceRun:
    """One training run of the reference: its settings and one record per evaluation (oldest first).

    A record maps CURVE_FIELDS to floats; tst_acc/tst_nll are None where validation did not improve.
    """

    data_name: str
    depth: int
    width: int
    weight_decay: float
    precision: str
    records: tuple[dict[str, Any], ...]
    batch_size: int = 256
    optim_ni: int = 48_000
    optim_lr: float = 0.1
    devices: int = 1  # the GPUs it trained on, data parallel

    @property
    def key(self) -> tuple[str, int, int, float, str]:
        return (self.data_name, self.depth, self.width, self.weight_decay, self.precision)

    @property
    def settings(self) -> dict[str, Any]:
        """Its values of REFERENCE_SETTINGS."""
        return {**REFERENCE_SETTINGS, "batch_size": self.batch_size, "optim_ni": self.optim_ni,
                "optim_lr": self.optim_lr}

    @property
    def label(self) -> str:
        return f"{self.data_name} R{self.depth}x{self.width} wd {self.weight_decay:g} {self.precision}"

    def best(self, up_to: int | None = None) -> dict[str, Any] | None:
        """The record of the best validation accuracy (the first, on ties), whose test figures the table
        reports; with `up_to`, the best of the evaluations up to that iteration: None before its first
        (a run of ours younger than that has nothing of the reference's to stand beside)."""
        records = [r for r in self.records if up_to is None or r["iter"] <= up_to]
        return max(records, key=lambda r: (r["val_acc"], -r["iter"])) if records else None

    def at(self, iteration: int) -> dict[str, Any] | None:
        return next((r for r in self.records if r["iter"] == iteration), None)


def parse_curve_value(text: str) -> float | None:
    return float(text) if text else None


# A log's columns beyond the seed's: its run's settings and devices (imagenet_curves.tsv.gz).
RUN_COLUMNS = {"batch_size": int, "optim_ni": int, "optim_lr": float, "devices": int}


@lru_cache(maxsize=2)
def read_runs(filename: str) -> dict[tuple[str, int, int, float, str], ReferenceRun]:
    """The reference runs of a shipped log file by (data_name, depth, width, weight_decay, precision)."""
    raw = resources.files("resbench.results").joinpath(filename).read_bytes()
    lines = [line for line in gzip.decompress(raw).decode("utf-8").splitlines() if line and not line.startswith("#")]
    records: dict[tuple, list[dict[str, Any]]] = {}
    settings: dict[tuple, dict[str, Any]] = {}
    for rec in csv.DictReader(lines, delimiter="\t"):
        key = (rec["data_name"], int(rec["depth"]), int(rec["width"]), float(rec["weight_decay"]), rec["precision"])
        records.setdefault(key, []).append({"iter": int(rec["iter"]),
                                            **{f: parse_curve_value(rec[f]) for f in CURVE_FIELDS}})
        settings[key] = {name: kind(rec[name]) for name, kind in RUN_COLUMNS.items() if name in rec}
    return {key: ReferenceRun(*key, records=tuple(sorted(recs, key=lambda r: r["iter"])), **settings[key])
            for key, recs in records.items()}


def seed_runs() -> dict[tuple[str, int, int, float, str], ReferenceRun]:
    """The 104 runs of the seed's tables and weight-decay sweep: what `compare`'s noise model is built on."""
    return read_runs(SEED_CURVES)


def reference_runs() -> dict[tuple[str, int, int, float, str], ReferenceRun]:
    """Every reference run (the seed's 104 and the 7 ImageNet ones) by (data_name, depth, width, weight_decay,
    precision), read from the shipped logs."""
    return {**read_runs(SEED_CURVES), **read_runs(IMAGENET_CURVES)}


def reference_weight_decays() -> list[float]:
    """The weight decays of the reference's sweep of the seed's rows, ascending."""
    return sorted({key[3] for key in seed_runs()})


def find_reference_run(data_name: str, depth: int, width: int, precision: str,
                       settings: dict[str, Any]) -> ReferenceRun | str:
    """The reference run of this configuration (`settings`: config.json's keys), or the reason there is none.

    Matched by data_name, depth, width, weight decay and precision (bf16 as the reference's fp16),
    provided the run shares the reference's batch, iterations, learning rate and momentum for that
    dataset and has no label smoothing or clipping; the seed may differ (several runs of a cell vary
    it). A setting missing from `settings` (an older config.json) is taken to be the trainer's
    default, which is REFERENCE_SETTINGS (and weight decay 0.001).
    """
    runs = reference_runs()
    of_dataset = [run for key, run in runs.items() if key[0] == data_name]
    if not of_dataset:  # the dataset first: no setting would give it one
        return f"the reference has no {data_name} runs"
    wanted = {**REFERENCE_SETTINGS, "optim_weight_decay": DEFAULT_WEIGHT_DECAY, **settings}
    other = [f"{name} {shown(wanted[name])} (the reference's: {shown(value)})"
             for name, value in of_dataset[0].settings.items() if not same_setting(wanted[name], value)]
    if other:
        return f"other settings: {'; '.join(other)}"
    same_cell = [run for key, run in runs.items() if key[:3] == (data_name, depth, width)]
    if not same_cell:
        return f"the reference has no R{depth}x{width} run on {data_name}"
    decay = float(wanted["optim_weight_decay"])
    same_decay = [run for run in same_cell if math.isclose(run.weight_decay, decay)]
    if not same_decay:
        swept = ", ".join(f"{wd:g}" for wd in sorted({run.weight_decay for run in same_cell}))
        return f"optim_weight_decay {decay:g} (the reference's sweep: {swept})"
    theirs = REFERENCE_PRECISION.get(precision, precision)
    found = [run for run in same_decay if run.precision == theirs]
    if found:
        return found[0]
    return f"precision {precision} (the reference ran R{depth}x{width} on {data_name} in fp32 only)"


def same_setting(ours: Any, theirs: Any) -> bool:
    if ours is None or theirs is None:
        return ours is theirs
    return math.isclose(float(ours), float(theirs), rel_tol=1e-9, abs_tol=1e-12)


def shown(value: Any) -> str:
    """A setting as the flags spell it: None is `off`, numbers in their shortest form."""
    if value is None:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table_reference(run: ReferenceRun) -> ReferenceRow:
    """The figures `table --compare reference` prints for a reference run: the published row where a
    table has one (at its weight decay), else the run's own log (best validation, its test figures)."""
    published = reference_lookup().get((run.data_name, run.depth, run.width, run.precision))
    if published is not None and math.isclose(run.weight_decay, published.weight_decay):
        return published
    best, last = run.best(), run.records[-1]
    params = next((row.params for row in published_rows() if (row.data_name, row.depth, row.width)
                   == (run.data_name, run.depth, run.width)), 0)
    return ReferenceRow(run.data_name, run.depth, run.width, run.precision, params, best["val_acc"],
                        best["tst_acc"], best["tst_nll"], last["elapsed_s"] / 60, run.devices, run.weight_decay,
                        run.batch_size, run.optim_ni, run.optim_lr)
