"""`resbench compare`: every run beside the reference's own run, evaluation by evaluation.

Each run folder is matched to the reference run of its cell (dataset, depth, width, weight decay,
precision; the reference's batch, iterations, learning rate and momentum), the runs of a cell
(seeds) are pooled, and at each of the reference's evaluations ours and theirs are compared for
val_acc, trn_loss and w_norm, then the final figures of the recipe's selection. The tolerance
comes from our own seeds where a cell has two or more (how far one more run may fall from their
mean: a 95% Student-t prediction interval), else from a default per dataset, sized on how far
the reference's own fp32 and fp16 runs of one recipe and seed drift apart. A run still going is
compared as far as it got: w_norm hardly depends on the data early on, so a mismatch in the
first evaluations points at the recipe (initialisation, weight decay, schedule) within minutes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from resbench.results.reference import (REFERENCE_SETTINGS, ReferenceRun, dataset_sort_key,
                                        find_reference_run, shape_sort_key)
from resbench.results.table import selected_figures
from resbench.runs.reader import Run
from resbench.results.stats import prediction_half_width, spread

# metrics.jsonl key -> (the reference's key, how the tolerance is expressed), in the order printed.
CURVES = {"val_acc": ("val_acc", "abs"), "trn_loss": ("trn_loss", "rel"), "trn_w_norm": ("w_norm", "rel")}
FINALS = {"val_acc": "abs", "tst_acc": "abs", "tst_nll": "rel"}
LABELS = {"val_acc": "val/acc", "trn_loss": "trn/loss", "trn_w_norm": "w_norm", "tst_acc": "tst/acc",
          "tst_nll": "tst/nll"}

# Default tolerances for a cell with one run. The reference's fp32 and fp16 depth-18 runs (same
# recipe and seed; the rounding differences make them two draws of one recipe) differ in val_acc
# by up to 0.10 (CIFAR-10), 0.13 (CIFAR-100) and 0.07 (TinyImageNet) while the learning rate is
# high, and by at most 0.006 at the end; in trn_loss by up to 9%, in w_norm by 0.5%, in the final
# tst_nll by 3%. Accuracy tolerances therefore shrink with the learning rate, from `peak` (at the
# peak rate) to `final` (at 0).
DEFAULT_ACC_TOLERANCE = {"CIFAR10_x32": {"final": 0.01, "peak": 0.15},
                         "CIFAR100_x32": {"final": 0.02, "peak": 0.2},
                         "TinyImageNet200_x32": {"final": 0.02, "peak": 0.1},
                         "TinyImageNet200_x64": {"final": 0.02, "peak": 0.1}}
DEFAULT_RELATIVE_TOLERANCE = {"trn_loss": 0.15, "trn_w_norm": 0.02, "tst_nll": 0.10}
# The least tolerance, however close our seeds agree: the last digit the reference's log prints.
FLOOR = {"abs": 0.001, "rel": 0.005}
EARLY = 0.1  # evaluations in the first 10% of the iterations (the warm-up) give the early warning


# ---------------------------------------------------------------- a cell and its verdict

@dataclass
class Check:
    """One comparison: our mean (over the runs that have the figure), theirs, and the tolerance."""

    metric: str
    iteration: int | None  # None: a final figure
    ours: float
    theirs: float
    tolerance: float  # absolute
    source: str  # "seeds" or "default"
    n: int

    @property
    def within(self) -> bool:
        return abs(self.ours - self.theirs) <= self.tolerance

    def describe(self) -> str:
        where = f"at iteration {self.iteration}" if self.iteration is not None else "(final)"
        return (f"{LABELS[self.metric]} {where}: ours {self.ours:.4g}, reference {self.theirs:.4g}, "
                f"difference {self.ours - self.theirs:+.4g}, tolerance ±{self.tolerance:.3g} ({self.source})")


@dataclass
class Cell:
    """The runs (seeds) of ours that share one reference run, and every comparison made."""

    reference: ReferenceRun
    runs: list[Run]
    checks: list[Check] = field(default_factory=list)
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        ref = self.reference
        return f"R{ref.depth}x{ref.width} wd {ref.weight_decay:g} {ref.precision}"

    @property
    def reached(self) -> int:
        """The last evaluation every run of the cell has reached."""
        return min((run.records[-1]["iter"] if run.records else 0) for run in self.runs)

    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.runs) and self.reached >= REFERENCE_SETTINGS["optim_ni"]

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.within]

    def diverged(self) -> list[Run]:
        return [run for run in self.runs if run.status == "diverged"]

    def verdict(self) -> dict[str, Any]:
        failures = sorted(self.failures(), key=lambda c: (c.iteration is None, c.iteration or 0))
        early = bool(failures) and failures[0].iteration is not None and \
            failures[0].iteration <= EARLY * REFERENCE_SETTINGS["optim_ni"]
        if self.diverged():
            status = "diverged"
        elif failures:
            status = "early warning" if early else "mismatch"
        elif not self.checks:
            status = "no evaluation yet"
        else:
            status = "match" if self.finished else "matching so far"
        return {"status": status, "within_tolerance": not failures and not self.diverged(),
                "finished": self.finished, "reached": self.reached,
                "first_failure": failures[0].describe() if failures else None,
                "failures": len(failures), "checks": len(self.checks)}

    def verdict_text(self) -> str:
        v = self.verdict()
        if v["status"] == "diverged":
            runs = ", ".join(f"{run.path.name} (after iteration {run.records[-1]['iter'] if run.records else 0})"
                             for run in self.diverged())
            return f"OUTSIDE tolerance: {len(self.diverged())} of {len(self.runs)} runs diverged: {runs}"
        if v["status"] == "no evaluation yet":
            return "no evaluation yet"
        if v["status"] == "match":
            return f"within tolerance ({v['checks']} checks)"
        if v["status"] == "matching so far":
            return (f"in progress: within tolerance up to iteration {v['reached']} of "
                    f"{REFERENCE_SETTINGS['optim_ni']} ({v['checks']} checks)")
        text = f"OUTSIDE tolerance ({v['failures']} of {v['checks']} checks); first: {v['first_failure']}"
        if v["status"] != "early warning":
            return text
        warm_up = EARLY * REFERENCE_SETTINGS["optim_ni"]
        early = {c.metric for c in self.failures() if c.iteration and c.iteration <= warm_up}
        if "trn_w_norm" in early:  # the weights' norm follows init, decay and schedule, hardly the data
            return "EARLY WARNING, w_norm is off: look at the initialisation, weight decay and schedule. " + text
        return "EARLY WARNING, w_norm matches but the fit does not: look at the data, labels and loss. " + text


def tolerance(metric: str, kind: str, values: list[float], theirs: float, data_name: str,
              lr_fraction: float) -> tuple[float, str]:
    """The absolute tolerance of one comparison and where it comes from (our seeds, or the default)."""
    floor = FLOOR[kind] * (abs(theirs) if kind == "rel" else 1)
    if len(values) >= 2:
        return max(prediction_half_width(values), floor), "seeds"
    if kind == "rel":
        return DEFAULT_RELATIVE_TOLERANCE[metric] * abs(theirs), "default"
    acc = DEFAULT_ACC_TOLERANCE.get(data_name, {"final": 0.02, "peak": 0.2})
    return acc["final"] + (acc["peak"] - acc["final"]) * lr_fraction, "default"


def record_value(run: Run, iteration: int, key: str) -> float | None:
    record = next((r for r in run.records if r["iter"] == iteration), None)
    value = None if record is None else record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare_cell(cell: Cell) -> Cell:
    """Fill in the cell's checks: each curve at each of the reference's evaluations our runs reached,
    then, once every run has finished, the final figures of the recipe's selection."""
    data_name, peak = cell.reference.data_name, REFERENCE_SETTINGS["optim_lr"]
    for theirs in cell.reference.records:
        for ours_key, (their_key, kind) in CURVES.items():
            values = [v for run in cell.runs if (v := record_value(run, theirs["iter"], ours_key)) is not None]
            if values and theirs[their_key] is not None:
                tol, source = tolerance(ours_key, kind, values, theirs[their_key], data_name, theirs["trn_lr"] / peak)
                cell.checks.append(Check(ours_key, theirs["iter"], statistics.fmean(values), theirs[their_key],
                                         tol, source, len(values)))
    best = cell.reference.best(up_to=cell.reached)  # for a run still going: the reference's best so far
    for metric, kind in FINALS.items():
        values = [v for run in cell.runs if (v := selected_figures(run.records, "val")[metric]) is not None]
        if not values:
            continue
        summary = spread(values)
        tol, source = tolerance(metric, kind, values, best[metric], data_name, 0.0)
        cell.finals[metric] = {"ours": summary.mean, "std": summary.std, "n": summary.n,
                               "interval_95": None if summary.low is None else [summary.low, summary.high],
                               "reference": best[metric], "reference_in_interval": summary.contains(best[metric]),
                               "tolerance": tol, "tolerance_source": source, "at_iteration": cell.reached,
                               "final": cell.finished}
        if cell.finished:
            cell.checks.append(Check(metric, None, summary.mean, best[metric], tol, source, summary.n))
    return cell


def match_runs(runs: list[Run]) -> tuple[list[Cell], list[tuple[Run, str]]]:
    """Cells of the runs that have a reference run, in the seed's order, and the others with the reason."""
    cells: dict[tuple, Cell] = {}
    unmatched = []
    for run in runs:
        found = find_reference_run(run.data_name, run.depth, run.width, run.precision, run.config)
        if isinstance(found, str):
            unmatched.append((run, found))
        else:
            cells.setdefault(found.key, Cell(found, [])).runs.append(run)
    ordered = sorted(cells.values(), key=lambda c: (dataset_sort_key(c.reference.data_name),
                                                    shape_sort_key(c.reference.depth, c.reference.width),
                                                    c.reference.weight_decay, c.reference.precision != "fp32"))
    return [compare_cell(cell) for cell in ordered], unmatched


# ---------------------------------------------------------------- output

def final_cell(final: dict[str, Any] | None) -> str:
    """`0.9212 ± 0.0013 (ref 0.9229, −0.0017, tol ±0.010; ref in 95% CI)`."""
    if final is None:
        return "n/a"
    ours = f"{final['ours']:.4f}" + (f" ± {final['std']:.4f}" if final["std"] is not None else "")
    inside = final["reference_in_interval"]
    where = "" if inside is None else f"; ref {'inside' if inside else 'outside'} our 95% CI"
    difference = f"{final['ours'] - final['reference']:+.4f}".replace("-", "\u2212")
    if not final["final"]:  # the best so far, beside the reference's best as far
        return f"{ours} (ref {final['reference']:.4f} by iter {final['at_iteration']}, {difference}; judged at the end)"
    return f"{ours} (ref {final['reference']:.4f}, {difference}, tol ±{final['tolerance']:.3g}{where})"


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 0) -> list[str]:
    """A markdown table: numbers right-aligned, the last `text_columns` columns left-aligned."""
    align = ["-:"] * (len(header) - text_columns) + [":-"] * text_columns
    return ["| " + " | ".join(header), "| " + " | ".join(align), *("| " + " | ".join(row) for row in rows)]


def curve_lines(cell: Cell) -> list[str]:
    """Ours beside theirs at each evaluation: value, reference, tolerance; ✗ where outside it."""
    by_iter: dict[int, dict[str, Check]] = {}
    for check in cell.checks:
        if check.iteration is not None:
            by_iter.setdefault(check.iteration, {})[check.metric] = check
    header = ["iter"] + [f"{LABELS[m]} {part}" for m in CURVES for part in ("ours", "ref", "tol")]
    rows = []
    for iteration, checks in sorted(by_iter.items()):
        row = [str(iteration)]
        for metric in CURVES:
            check = checks.get(metric)
            row += (["", "", ""] if check is None else
                    [f"{check.ours:.4g}" + ("" if check.within else " ✗"), f"{check.theirs:.4g}",
                     f"±{check.tolerance:.3g}"])
        rows.append(row)
    return markdown_table(header, rows) if rows else ["(no evaluation in common yet)"]


def tolerance_note(cell: Cell) -> str:
    n = len(cell.runs)
    if n >= 2:
        return (f"tolerance: our {n} runs' 95% Student-t prediction interval for one more run (at least "
                f"±{FLOOR['abs']} for accuracies, ±{FLOOR['rel']:.1%} for the others); where fewer than 2 runs "
                "have a figure, the default")
    acc = DEFAULT_ACC_TOLERANCE.get(cell.reference.data_name, {"final": 0.02, "peak": 0.2})
    return (f"tolerance (one run, defaults for {cell.reference.data_name}): accuracy ±{acc['final']} at the end, "
            f"growing with the learning rate to ±{acc['peak']} at its peak; trn/loss ±"
            f"{DEFAULT_RELATIVE_TOLERANCE['trn_loss']:.0%}, w_norm ±{DEFAULT_RELATIVE_TOLERANCE['trn_w_norm']:.0%}, "
            f"tst/nll ±{DEFAULT_RELATIVE_TOLERANCE['tst_nll']:.0%}")


def render_markdown(cells: list[Cell], unmatched: list[tuple[Run, str]], curves: bool = True) -> str:
    lines: list[str] = []
    for data_name in dict.fromkeys(cell.reference.data_name for cell in cells):
        lines += [f"### {data_name}", ""]
        rows = [[cell.label, str(len(cell.runs)), str(cell.reached), *(final_cell(cell.finals.get(m)) for m in FINALS),
                 cell.verdict_text()] for cell in cells if cell.reference.data_name == data_name]
        lines += markdown_table(["cell", "runs", "iter", "val/acc", "tst/acc", "tst/nll", "verdict"], rows, 1)
        lines.append("")
        for cell in cells if curves else []:
            if cell.reference.data_name != data_name:
                continue
            lines += [f"#### {data_name} {cell.label}", "",
                      "runs: " + ", ".join(str(run.path) for run in cell.runs), tolerance_note(cell), ""]
            lines += curve_lines(cell)
            lines.append("")
    if unmatched:
        lines += ["### No reference run", ""]
        lines += [f"- {run.path}: no reference run: {reason}" for run, reason in unmatched]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def as_json(cells: list[Cell], unmatched: list[tuple[Run, str]]) -> dict[str, Any]:
    return {
        "cells": [{"data_name": c.reference.data_name, "depth": c.reference.depth, "width": c.reference.width,
                   "weight_decay": c.reference.weight_decay, "precision": c.reference.precision,
                   "runs": [str(run.path) for run in c.runs], "verdict": c.verdict(), "finals": c.finals,
                   "curves": [{"metric": k.metric, "iter": k.iteration, "ours": k.ours, "reference": k.theirs,
                               "tolerance": k.tolerance, "tolerance_source": k.source, "n": k.n, "within": k.within}
                              for k in c.checks if k.iteration is not None]}
                  for c in cells],
        "no_reference_run": [{"run": str(run.path), "reason": reason} for run, reason in unmatched],
    }
