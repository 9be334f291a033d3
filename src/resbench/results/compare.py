"""`resbench compare`: every run beside the reference's own run of its cell, with one verdict per cell.

Each run folder is matched to the reference run of its cell (dataset, depth, width, weight decay,
precision; the reference's batch, iterations, learning rate and momentum). The runs of a cell
(seeds) are judged together, each statistic with the runs that have reached it: the curves'
window means (val_acc, trn_loss, w_norm) as soon as a window is complete, the final tst_acc and
tst_nll of the recipe's selection from the runs that finished. The verdict is one statistical
test with a 5% false-alarm rate (results/noise.py says how it was calibrated), and it states its
power: the smallest final shortfall that the runs given would have revealed. A run still going is
judged as far as it got: w_norm hardly depends on the data early on, so a fault in the
initialisation, weight decay or schedule shows within minutes.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from resbench.console import printable
from resbench.data.facts import val_is_test_note, validates_on_test
from resbench.results.noise import (
    ALPHA,
    CURVES,
    FINALS,
    MEASURES,
    POWER,
    WINDOWS,
    Check,
    as_figure,
    calibrated,
    detectable,
    final_check,
    noise_model,
    published_figure,
    reference_curve,
    runs_needed,
    schedule_windows,
    window_label,
    window_mean,
)
from resbench.results.reference import (
    ReferenceRun,
    dataset_sort_key,
    find_reference_run,
    shape_sort_key,
)
from resbench.results.table import selected_figures
from resbench.runs.reader import Run

SHOWN_FINALS = ("val_acc", "tst_acc", "tst_nll")  # printed; val_acc, the selection's criterion, is not tested
SHORTFALL = 0.005  # half a point of tst/acc, as between neighbouring rows: every verdict says if it could see it
POWER_RUNS = (1, 3, 5)


def figure(values: dict[str, Any], key: str) -> float | None:
    value = values.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- a cell and its verdict

@dataclass
class Cell:
    """The runs (seeds) of ours that share one reference run, and the tests made."""

    reference: ReferenceRun
    runs: list[Run]
    tests: list[Check] = field(default_factory=list)
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)  # what is printed of the final figures

    @property
    def label(self) -> str:
        ref = self.reference
        return f"R{ref.depth}x{ref.width} wd {ref.weight_decay:g} {ref.precision}"

    @property
    def windows(self) -> tuple[tuple[int, int], ...]:
        """The curve windows of the reference's schedule (the 48k one's, or the ImageNet runs' 128k)."""
        return schedule_windows(self.reference.optim_ni)

    @property
    def reached(self) -> int:
        """The last evaluation every run of the cell has reached."""
        return min(last_iteration(run) for run in self.runs)

    @property
    def finished_runs(self) -> list[Run]:
        return [run for run in self.runs if run.finished]

    @property
    def finished(self) -> bool:
        return len(self.finished_runs) == len(self.runs)

    def diverged(self) -> list[Run]:
        return [run for run in self.runs if run.status == "diverged"]

    def failures(self) -> list[Check]:
        """Failed tests, curves in schedule order, then the finals."""
        return [test for test in self.tests if test.decision == "fail"]

    def verdict(self) -> dict[str, Any]:
        failures, unsure = self.failures(), [t for t in self.tests if t.decision == "inconclusive"]
        if self.diverged():
            status = "diverged"
        elif failures:
            status = "early warning" if failures[0].statistic.window == self.windows[0] else "differs"
        elif unsure:
            status = "inconclusive"
        elif not self.tests:
            status = "no evaluation yet"
        else:
            status = "consistent" if self.finished else "consistent so far"
        return {"status": status, "consistent": status in ("consistent", "consistent so far"),
                "finished": self.finished, "reached": self.reached, "runs_finished": len(self.finished_runs),
                "false_alarm_rate": ALPHA, "calibrated": calibrated(self.reference), "tests": len(self.tests),
                "failures": [check_json(t) for t in failures], "inconclusive": [check_json(t) for t in unsure],
                "power": self.power()}

    def power(self) -> dict[str, Any]:
        """Per final figure: the smallest true difference detected with probability POWER by the runs given (or
        one run, while none has finished), by 1, 3 and 5 runs and by very many; for tst_acc also how many
        runs would detect half a point (None: no number would, the reference's one run spreads too much)."""
        n = max(len(self.finished_runs), 1)
        power: dict[str, Any] = {}
        for key in FINALS:
            statistic = noise_model()[key]
            power[key] = {"runs": n, "detectable": detectable(statistic, n),
                          "detectable_by_runs": {str(k): detectable(statistic, k) for k in POWER_RUNS},
                          "detectable_by_many": detectable(statistic, 10 ** 6)}
        power["tst_acc"]["runs_needed_for_half_a_point"] = runs_needed(noise_model()["tst_acc"], SHORTFALL)
        return power

    def verdict_text(self) -> str:
        text = self.verdict_words()
        if calibrated(self.reference):
            return text
        return (f"{text} [noise model of the CIFAR/TinyImageNet runs, not calibrated here: the reference has one fp16 "
                "log of this cell, so the false-alarm rate is not known]")

    def verdict_words(self) -> str:
        v = self.verdict()
        if v["status"] == "diverged":
            runs = ", ".join(f"{printable(run.path.name)} (after iteration {last_iteration(run)})"
                             for run in self.diverged())
            return f"DIFFERS: {len(self.diverged())} of {len(self.runs)} runs diverged: {runs}"
        if v["status"] == "no evaluation yet":
            return f"no evaluation yet (the first window ends at iteration {self.windows[0][1]})"
        failures = self.failures()
        if failures:
            first = failures[0]
            text = (f"DIFFERS from the reference: {describe(first)} ({len(failures)} of {len(self.tests)} tests "
                    f"fail; {ALPHA:.0%} false-alarm rate)")
            if v["status"] != "early warning":
                return text
            if any(t.statistic.measure.ours == "trn_w_norm" and t.statistic.window == self.windows[0]
                   for t in failures):
                return "EARLY WARNING, w_norm is off: look at the initialisation, weight decay and schedule. " + text
            return "EARLY WARNING, w_norm matches but the fit does not: look at the data, labels and loss. " + text
        if v["status"] == "inconclusive":
            test = next(t for t in self.tests if t.decision == "inconclusive")
            return (f"INCONCLUSIVE: our {test.n} runs scatter more than the reference's noise model on "
                    f"{test.statistic.label} (σ {test.sigma:.3g} pooled, {test.statistic.sigma:.3g} modelled): "
                    f"{describe(test)}; more runs, or a look at why they scatter")
        if v["status"] == "consistent so far":
            return (f"consistent so far: {len(self.tests)} tests up to iteration {v['reached']} of "
                    f"{self.reference.optim_ni}; the final figures are judged at the end")
        return (f"consistent with the reference ({len(self.tests)} tests, {ALPHA:.0%} false-alarm rate); "
                f"{self.power_text()}")

    def power_text(self) -> str:
        power = self.power()
        acc, nll = power["tst_acc"], power["tst_nll"]
        needed = acc["runs_needed_for_half_a_point"]
        half = (f"{SHORTFALL} is below what any number of runs can detect (the reference is one run)"
                if needed is None else f"{SHORTFALL} needs {needed} runs")
        runs = f"{acc['runs']} run{'s' if acc['runs'] > 1 else ''}"
        return (f"would detect a tst/acc shortfall ≥ {acc['detectable']:.3f} ({POWER:.0%} power, {runs}) or a tst/nll "
                f"excess ≥ {nll['detectable']:.3f}; {half}")


def describe(test: Check) -> str:
    """`tst/acc −0.0210 (p = 0.0003, tolerance ±0.0095)`."""
    measure = test.statistic.measure
    tolerance = f"{math.expm1(test.tolerance):.1%}" if measure.log else f"{test.tolerance:.4f}"
    return (f"{test.statistic.label} {as_figure(measure, test.difference)} (p {p_value(test.p)}, "
            f"tolerance ±{tolerance}, n = {test.n})").replace("-", "\u2212")


def check_json(test: Check) -> dict[str, Any]:
    s = test.statistic
    return {"statistic": s.key, "metric": s.measure.ours, "window": list(s.window) if s.window else None,
            "scale": "log" if s.measure.log else "absolute", "n": test.n, "ours": list(test.ours),
            "reference": test.theirs, "difference": test.difference, "tolerance": test.tolerance,
            "one_run_tolerance": test.one_run_tolerance, "sigma": test.sigma, "df": test.df, "p": test.p,
            "alpha": s.alpha, "decision": test.decision}


def last_iteration(run: Run) -> int:
    return int(run.records[-1]["iter"]) if run.records else 0


def curve_values(run: Run, key: str) -> dict[int, float]:
    return {int(r["iter"]): v for r in run.records or [] if (v := figure(r, key)) is not None}


def curve_checks(cell: Cell) -> list[Check]:
    """Each curve window, with the runs (not diverged) that have completed it."""
    tests = []
    live = [run for run in cell.runs if run.status != "diverged"]
    scaled = dict(zip(WINDOWS, cell.windows))  # the 48k schedule's window -> this schedule's
    for name in CURVES:
        measure = MEASURES[name]
        theirs = reference_curve(cell.reference, measure)
        curves = [(last_iteration(run), curve_values(run, name)) for run in live]  # once, not once per window
        for calibration_window in measure.windows:
            window = scaled[calibration_window]
            ours = [m for reached, curve in curves if reached >= window[1]
                    and (m := window_mean(curve, measure, window)) is not None]
            if ours:
                statistic = noise_model()[f"{name} {window_label(calibration_window)}"]
                if window != calibration_window:  # its noise as the same stretch of the seed's schedule
                    statistic = dataclasses.replace(statistic, window=window)
                tests.append(Check(statistic, tuple(ours), window_mean(theirs, measure, window)))
    return sorted(tests, key=lambda t: t.statistic.window)


def compare_cell(cell: Cell) -> Cell:
    """Fill in the cell's tests and the final figures printed: of the finished runs, judged; while none has
    finished, the best so far beside the reference's best up to the same iteration, not judged."""
    cell.tests = curve_checks(cell)
    finished = cell.finished_runs
    runs = finished or cell.runs
    for key in SHOWN_FINALS:
        ours = [v for run in runs if (v := figure(selected_figures(run.records or [], "val"), key)) is not None]
        if not ours:
            continue
        judged = bool(finished) and key in FINALS
        so_far = None if finished else cell.reference.best(up_to=cell.reached)
        theirs = published_figure(cell.reference, key) if finished else (so_far[key] if so_far else None)
        cell.finals[key] = {"ours": statistics.fmean(ours), "std": statistics.stdev(ours) if len(ours) > 1 else None,
                            "n": len(ours), "reference": theirs, "final": bool(finished),
                            "at_iteration": None if finished else cell.reached,
                            "reference_first_iteration": cell.reference.records[0]["iter"]}
        if judged:
            test = final_check(key, ours, cell.reference)
            cell.tests.append(test)
            cell.finals[key].update(p=test.p, decision=test.decision)
    return cell


def match_runs(runs: list[Run]) -> tuple[list[Cell], list[tuple[Run, str]]]:
    """Cells of the runs that have a reference run, in the seed's order, and the others with the reason."""
    cells: dict[tuple, Cell] = {}
    unmatched = []
    for run in runs:
        found = (f"not the official {run.data_name}: {run.data_problem}" if run.data_problem else
                 find_reference_run(run.data_name, run.depth, run.width, run.precision, run.config))
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
    """`0.9212 ± 0.0013 (ref 0.923, −0.0018, p 0.61)`; `✗` where the test fails, `?` where it cannot tell."""
    if final is None:
        return "n/a"
    ours = f"{final['ours']:.4f}" + (f" ± {final['std']:.4f}" if final["std"] is not None else "")
    if final["reference"] is None:  # younger than the reference's first evaluation: nothing to set beside it
        return (f"{ours} (no ref yet: its first evaluation is at iter {final['reference_first_iteration']}; "
                "judged at the end)")
    difference = f"{final['ours'] - final['reference']:+.4f}".replace("-", "\u2212")
    theirs = f"{final['reference']:.4f}".rstrip("0")  # a published figure has 3 decimals, the log 4
    if not final["final"]:  # the best so far, beside the reference's best as far
        return f"{ours} (ref {theirs} by iter {final['at_iteration']}, {difference}; judged at the end)"
    if "p" not in final:  # val_acc: the selection's criterion, not tested
        return f"{ours} (ref {theirs}, {difference})"
    mark = {"fail": " ✗", "inconclusive": " ?"}.get(final["decision"], "")
    return f"{ours} (ref {theirs}, {difference}, p {p_value(final['p'])}){mark}"


def p_value(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 0) -> list[str]:
    """A markdown table: numbers right-aligned, the last `text_columns` columns left-aligned."""
    align = ["-:"] * (len(header) - text_columns) + [":-"] * text_columns
    return ["| " + " | ".join(header), "| " + " | ".join(align), *("| " + " | ".join(row) for row in rows)]


def check_lines(cell: Cell) -> list[str]:
    """One line per test: the statistic, ours − reference, the tolerance, p, its level and the decision."""
    rows = []
    for test in cell.tests:
        measure = test.statistic.measure
        tolerance = f"±{math.expm1(test.tolerance):.2%}" if measure.log else f"±{test.tolerance:.4f}"
        rows.append([test.statistic.label, str(test.n), as_figure(measure, test.difference), tolerance,
                     p_value(test.p), f"{test.statistic.alpha:.3g}", test.decision])
    header = ["statistic", "n", "ours − ref", "tolerance", "p", "α", "decision"]
    return markdown_table(header, rows, 1) if rows else [
        f"(no window complete yet: the first ends at iteration {cell.windows[0][1]})"]


def curve_lines(cell: Cell) -> list[str]:
    """Ours (the mean over the runs that have it) beside theirs at each of the reference's evaluations."""
    rows = []
    curves = {key: [curve_values(run, key) for run in cell.runs] for key in CURVES}  # once, not per evaluation
    for theirs in cell.reference.records:
        ours = {key: [v for curve in curves[key] if (v := curve.get(theirs["iter"])) is not None] for key in CURVES}
        if not any(ours.values()):
            continue
        row = [str(theirs["iter"])]
        for key in CURVES:
            row += [f"{statistics.fmean(ours[key]):.4g}" if ours[key] else "", f"{theirs[MEASURES[key].theirs]:.4g}"]
        rows.append(row)
    header = ["iter"] + [f"{MEASURES[key].label} {part}" for key in CURVES for part in ("ours", "ref")]
    return markdown_table(header, rows) if rows else ["(no evaluation in common yet)"]


def noise_note(cell: Cell) -> str:
    stages = sorted({last_iteration(run) for run in cell.runs})
    stage = "" if len(stages) == 1 else (f"; runs at different stages ({', '.join(map(str, stages))}): each window "
                                         "is judged with the runs that completed it, the finals with the finished ones")
    if not calibrated(cell.reference):
        return ("one decision for the cell, with the noise model of the CIFAR/TinyImageNet runs (their fp32/fp16 "
                "pairs, each window as the same stretch of their 48k schedule), pooled with our runs' own spread: the "
                "reference ran this cell once, in fp16 only, so nothing measures the noise of a 1,000-class run here "
                "and the 5% false-alarm rate is not known; read the verdict as a screen, the curves as the "
                f"check{stage}")
    return (f"one decision for the cell, {ALPHA:.0%} false alarms in all (Bonferroni over the tests); noise model "
            f"from the reference's fp32/fp16 pairs, pooled with our runs' own spread (docs/results.md){stage}")


def render_markdown(cells: list[Cell], unmatched: list[tuple[Run, str]], curves: bool = True) -> str:
    lines: list[str] = []
    for data_name in dict.fromkeys(cell.reference.data_name for cell in cells):
        lines += [f"### {data_name}", ""]
        rows = [[cell.label, str(len(cell.runs)), str(cell.reached),
                 *(final_cell(cell.finals.get(m)) for m in SHOWN_FINALS), cell.verdict_text()]
                for cell in cells if cell.reference.data_name == data_name]
        lines += markdown_table(["cell", "runs", "iter", "val/acc", "tst/acc", "tst/nll", "verdict"], rows, 1)
        lines += ["", val_is_test_note(data_name) + ".", ""] if validates_on_test(data_name) else [""]
        for cell in cells if curves else []:
            if cell.reference.data_name != data_name:
                continue
            lines += [f"#### {data_name} {cell.label}", "",
                      "runs: " + ", ".join(printable(run.path) for run in cell.runs), noise_note(cell), ""]
            lines += [*check_lines(cell), "", *curve_lines(cell), ""]
    if unmatched:
        lines += ["### No reference run", ""]
        lines += [f"- {printable(run.path)}: no reference run: {printable(reason)}" for run, reason in unmatched]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def as_json(cells: list[Cell], unmatched: list[tuple[Run, str]]) -> dict[str, Any]:
    return {
        "cells": [{"data_name": c.reference.data_name, "depth": c.reference.depth, "width": c.reference.width,
                   "weight_decay": c.reference.weight_decay, "precision": c.reference.precision,
                   "val_is_test": validates_on_test(c.reference.data_name),
                   "runs": [str(run.path) for run in c.runs], "verdict": c.verdict(), "finals": c.finals,
                   "tests": [check_json(t) for t in c.tests]}
                  for c in cells],
        "noise_model": {key: {"sigma": s.sigma, "df": s.df, "alpha": s.alpha, "margin": s.measure.margin,
                              "source": s.source} for key, s in noise_model().items()},
        "no_reference_run": [{"run": str(run.path), "reason": reason} for run, reason in unmatched],
    }

