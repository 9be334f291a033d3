"""`resbench table`: turn a folder of runs into the seed's tables.

The table reproduces seed-results.md character for character when given the seed's figures, so a
reproduction can be diffed against the specification; `--compare reference` writes each
published figure and our difference beside our own, inside the same cell:
`0.921 (ref 0.923, −0.002)`. Runs that differ in a setting (an lr or weight-decay sweep) are
rows of their own, the differing settings shown as columns; several runs (seeds) of one row are
summarised as mean ± std [95% Student-t interval]. `--selection` picks which evaluation of a run
the figures come from: the best validation accuracy (the recipe's), the last, or the best test
accuracy (the optimistic figure test-selected baselines report); `all` shows the three.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from resbench.console import printable
from resbench.data.facts import val_is_test_note, validates_on_test
from resbench.results.columns import DEFAULT_COLUMNS, SUMMARY_COLUMNS, column_value
from resbench.results.noise import FINALS, final_check, published_figure
from resbench.results.reference import (
    ReferenceRun,
    dataset_sort_key,
    find_reference_run,
    precision_sort_key,
    shape_sort_key,
    table_reference,
)
from resbench.results.stats import CONFIDENCE, SHAKY_BELOW, figure_range, spread, t_quantile
from resbench.runs.reader import Run
from resbench.runs.schema import NUMBER
from resbench.settings.config import flag_value

# The seed's columns around the figures (--columns; by default its val/acc, tst/acc and tst/nll).
HEADER = ("Depth", "Width", "# Params", "misc")
ALIGN = ("-:", "-:", "-:", ":-")
METRICS = ("val_acc", "tst_acc", "tst_nll")
# Which evaluation of a run the figures come from, and how a row names it under --selection all.
SELECTIONS = {"val": "best val", "last": "last", "test": "best test"}
# Column headers of the settings that tell rows apart, in this order; others after, by name.
SETTING_LABELS = {"batch_size": "batch", "optim_ni": "iters", "optim_lr": "lr", "optim_momentum": "momentum",
                  "optim_weight_decay": "wd", "optim_label_smoothing": "smoothing", "optim_global_clipping": "clip",
                  "eval_every": "eval every", "deterministic": "deterministic", "sync_bn": "sync_bn",
                  "bn_groups": "BN groups"}
MINUS = "\u2212"
MISSING = "n/a"  # a cell none of whose runs has the figure (every one diverged before its first evaluation)
INTERVAL_NOTE = ("mean ± sample std [95% Student-t interval of the mean, clipped to what the figure can be: "
                 "[0, 1] for an accuracy, ≥ 0 for an NLL] over the n runs (seeds) of a row; one run: its figure")
SHAKY = "†"  # marks the interval of a row of fewer than SHAKY_BELOW runs

# ---------------------------------------------------------------- selection: which evaluation counts

def select_record(records: list[dict], selection: str) -> dict | None:
    """The evaluation a selection mode takes: the first best validation accuracy (the recipe's: the
    checkpoint it keeps), the last one, or the first best test accuracy (`tst_acc_at_eval`)."""
    if selection == "last":
        return records[-1] if records else None
    key = "val_acc" if selection == "val" else "tst_acc_at_eval"
    scored = [r for r in records if isinstance(r.get(key), NUMBER)]
    return max(scored, key=lambda r: r[key]) if scored else None  # max keeps the first of equals


def selected_figures(records: list[dict], selection: str) -> dict[str, float | None]:
    """val_acc, tst_acc, tst_nll and iter of the evaluation `selection` takes (None where not recorded)."""
    record = select_record(records, selection)
    if record is None:
        return dict.fromkeys((*METRICS, "iter"))
    # The best-validation record holds the test figures of the kept checkpoint (also in older runs).
    test = "" if selection == "val" and "tst_acc" in record else "_at_eval"
    return {"val_acc": record["val_acc"], "tst_acc": record.get(f"tst_acc{test}"),
            "tst_nll": record.get(f"tst_nll{test}"), "iter": record["iter"]}


def run_figures(run: Run, selection: str) -> dict[str, float | None]:
    """val_acc, tst_acc, tst_nll and iter of a finished run under a selection mode."""
    if selection == "val":  # the recipe's, as summary.json has it
        s = run.summary
        return {"val_acc": s["best_val_acc"], "tst_acc": s["tst_acc"], "tst_nll": s["tst_nll"],
                "iter": s.get("best_iter")}
    return selected_figures(run.records or [], selection)


# ---------------------------------------------------------------- grouping runs into rows

@dataclass
class Row:
    """One table row: one configuration and setting, aggregated over the runs (seeds) that share it."""

    data_name: str
    depth: int
    width: int
    precision: str
    settings: tuple[tuple[str, Any], ...]  # the values of the settings that differ between the table's rows
    runs: list[Run] = field(default_factory=list)
    chosen_from: int = 0  # under --select_by val: how many settings this row was chosen from

    @property
    def params(self) -> int:
        return self.runs[0].summary["params"]

    @property
    def summaries(self) -> list[dict]:
        return [run.summary for run in self.runs]

    def values(self, column: str, selection: str = "val") -> list[float]:
        """The figures of a --columns column (or a summary field such as val_acc) of the runs that have one:
        a run that diverged before its first evaluation has none, one never given to `resbench eval`
        no eval.json figure. Only the training figures depend on the selection; eval.json scores best.pt."""
        if column in SUMMARY_COLUMNS or column in METRICS:
            metric = SUMMARY_COLUMNS.get(column, column)
            figures = (run_figures(run, selection)[metric] for run in self.runs)
        else:
            figures = (column_value(run.evaluation, column) for run in self.runs)
        return [float(v) for v in figures if v is not None]

    def hours(self) -> float:
        return statistics.fmean(float(s["wall_seconds"]) for s in self.summaries) / 3600

    @property
    def data_problem(self) -> str | None:
        """How its runs' built-in set differed from the official one (`Run.data_problem`), or None."""
        return next((run.data_problem for run in self.runs if run.data_problem), None)

    def reference_run(self) -> ReferenceRun | None:
        """The reference's run of this row, if it has the reference's settings and the official data."""
        if self.data_problem:
            return None
        found = find_reference_run(self.data_name, self.depth, self.width, self.precision,
                                   self.runs[0].summary.get("config") or {})
        return None if isinstance(found, str) else found


def comparable(value: Any) -> str:
    """One spelling per value, so that 1 and 1.0 are the same setting."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    return json.dumps(value, sort_keys=True)


def varying_settings(runs: list[Run]) -> list[str]:
    """The settings (besides seed and paths) in which some of `runs` differ, in SETTING_LABELS order."""
    settings = [run.settings() for run in runs]
    keys = set().union(*settings)
    varying = {k for k in keys if len({comparable(s.get(k)) for s in settings}) > 1}
    order = list(SETTING_LABELS)
    return sorted(varying, key=lambda k: (order.index(k) if k in order else len(order), k))


def settings_sort_key(settings: tuple[tuple[str, Any], ...]) -> tuple:
    """Rows of one configuration by their settings' values: numbers ascending, unset first."""
    return tuple((0, "") if v is None else (1, float(v)) if isinstance(v, NUMBER) else (2, str(v)) for _, v in settings)


def group_rows(runs: list[Run | dict]) -> dict[str, list[Row]]:
    """Rows per dataset, datasets and rows in the seed's order (unknown ones after).

    A row is a configuration (depth, width, precision) and the values of every setting that differs
    between the runs of its dataset's table, so runs trained differently are never averaged.
    """
    runs = [run if isinstance(run, Run) else Run.from_summary(run) for run in runs]
    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.summary["data_name"], []).append(run)
    tables = {}
    for data_name in sorted(by_dataset, key=dataset_sort_key):
        varying = varying_settings(by_dataset[data_name])
        rows: dict[tuple, Row] = {}
        for run in by_dataset[data_name]:
            s, settings = run.summary, tuple((k, run.settings().get(k)) for k in varying)
            key = (int(s["depth"]), int(s["width"]), s["precision"], comparable(settings), bool(run.data_problem))
            rows.setdefault(key, Row(data_name, key[0], key[1], key[2], settings)).runs.append(run)
        tables[data_name] = sorted(rows.values(), key=lambda r: (shape_sort_key(r.depth, r.width),
                                                                 settings_sort_key(r.settings),
                                                                 precision_sort_key(r.precision)))
    return tables


def select_by_val(rows: list[Row]) -> list[Row]:
    """Per configuration (depth, width, precision), the row whose settings give the best mean validation
    accuracy: the model selection the reference's table did not make (its weight decay is fixed)."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.depth, row.width, row.precision), []).append(row)
    best = {key: max(group, key=lambda r: statistics.fmean(r.values("val_acc")) if r.values("val_acc") else -1.0)
            for key, group in groups.items()}
    return [dataclasses.replace(row, chosen_from=len(groups[key])) for row in rows
            if best[key := (row.depth, row.width, row.precision)] is row]


# ---------------------------------------------------------------- formatting cells

def format_stat(values: list[float], column: str = "") -> str:
    """`0.923` for one run, `0.923 ± 0.002 [0.918, 0.928]` (mean ± sample std [95% t-interval, clipped to the
    column's `figure_range`]) for several, marked † for fewer than SHAKY_BELOW."""
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.3f}"
    summary = spread(values, bounds=figure_range(column))
    shaky = SHAKY if len(values) < SHAKY_BELOW else ""
    return f"{summary.mean:.3f} ± {summary.std:.3f} [{summary.low:.3f}, {summary.high:.3f}]{shaky}"


def shaky_note() -> str:
    """What † means, where a row has it."""
    t = t_quantile(0.5 + CONFIDENCE / 2, SHAKY_BELOW - 2)
    return (f"{SHAKY} n = {SHAKY_BELOW - 1}: the interval of {SHAKY_BELOW - 1} runs spans ±{t:.1f} standard errors "
            f"(Student's t, {SHAKY_BELOW - 2} degree of freedom) and says little; {SHAKY_BELOW} runs or more narrow it")


def format_difference(ours: float, published: float) -> str:
    """Signed difference of the figures as printed (3 decimals), with a true minus sign."""
    diff = round(ours, 3) - round(published, 3)
    return f"{diff:+.3f}".replace("-0.000", "+0.000").replace("-", MINUS)


def metric_cell(row: Row, column: str, selection: str, ref: ReferenceRun | None) -> str:
    """Our figure; with a reference run, the published one beside it (the reference's selection is always its
    best validation accuracy: other selections say so), and under the recipe's selection `compare`'s mark:
    ✗ where its test of a final figure fails, ? where it cannot tell."""
    values = row.values(column, selection)
    ours = format_stat(values, column)
    if ref is None or column not in SUMMARY_COLUMNS:  # the reference publishes the seed's three figures only
        return ours
    metric = SUMMARY_COLUMNS[column]
    published = published_figure(ref, metric)
    label = "ref" if selection == "val" else "ref, its best val"
    if not values:
        return f"{ours} ({label} {published:.3f})"
    mark = ""
    if selection == "val" and metric in FINALS:
        mark = {"fail": " ✗", "inconclusive": " ?"}.get(final_check(metric, values, ref).decision, "")
    return f"{ours} ({label} {published:.3f}, {format_difference(statistics.fmean(values), published)}){mark}"


def setting_value(value: Any) -> str:
    """A setting in a table's column: as the flags spell it, a number short (1e-3, not 0.001)."""
    return f"{value:g}" if isinstance(value, float) else flag_value(value)


def iterations_note(row: Row, selection: str) -> str:
    """Where a non-default selection found its figures: `iter 46000`, or a range over seeds."""
    iters = sorted({int(run_figures(run, selection)["iter"]) for run in row.runs
                    if run_figures(run, selection)["iter"]})
    if not iters:
        return ""
    return f"iter {iters[0]}" if len(iters) == 1 else f"iter {iters[0]}–{iters[-1]}"


def misc_cell(row: Row, show_precision: bool, ref: ReferenceRun | None, selection: str, first: bool,
              show_iterations: bool) -> str:
    """Precision and wall time (as the seed does for its fp32/fp16 pairs), run count, failures; where
    another selection than the recipe's is shown, the iterations each took."""
    parts = []
    if first and show_precision:
        hours = f"{row.hours():.1f} hrs"
        if ref is not None:
            published = table_reference(ref)
            hours += f"; ref {published.wall_min / 60:.1f} hrs" + (
                f" on {published.devices} GPUs" if published.devices > 1 else "")
        parts.append(f"{row.precision} ({hours})")
    if first and len(row.runs) > 1:
        parts.append(f"n={len(row.runs)}")
    diverged = sum(s.get("status") == "diverged" for s in row.summaries)
    if first and diverged:
        parts.append(f"{diverged} diverged")
    if first and row.data_problem:
        parts.append("not the official data, no published figures")
    if first and row.chosen_from > 1:
        parts.append(f"best val/acc of {row.chosen_from} settings")
    if show_iterations:
        parts.append(iterations_note(row, selection))
    return ", ".join(part for part in parts if part)


def shows_precision(row: Row, rows: list[Row]) -> bool:
    """The seed names precision and hours on its depth-18 rows; we also do wherever it is not plain fp32."""
    siblings = {r.precision for r in rows if (r.depth, r.width) == (row.depth, row.width)}
    return row.depth == 18 or siblings != {"fp32"}


def config_cells(row: Row, previous: Row | None) -> list[str]:
    """Depth, Width, # Params and the settings columns; under a row of the same depth and width they
    are left blank as far as they repeat it (the seed's precision variants, a sweep's values)."""
    same_shape = previous is not None and (previous.depth, previous.width) == (row.depth, row.width)
    cells = ["", "", ""] if same_shape else [str(row.depth), str(row.width), f"{row.params / 1e6:.2f} M"]
    for i, (_, value) in enumerate(row.settings):
        repeated = same_shape and previous.settings[:i + 1] == row.settings[:i + 1]
        cells.append("" if repeated else setting_value(value))
    return cells


def row_lines(row: Row, previous: Row | None, rows: list[Row], selection: str, compare: bool,
              columns: tuple[str, ...] = DEFAULT_COLUMNS) -> list[list[str]]:
    """The cells of a row: one line, or under --selection all one line per selection mode."""
    ref = row.reference_run() if compare else None
    modes = list(SELECTIONS) if selection == "all" else [selection]
    lines = []
    for i, mode in enumerate(modes):
        config = config_cells(row, previous) if i == 0 else [""] * (3 + len(row.settings))
        shown = [SELECTIONS[mode]] if selection == "all" else []
        metrics = [metric_cell(row, column, mode, ref) for column in columns]
        lines.append([*config, *shown, *metrics, misc_cell(row, shows_precision(row, rows), ref, mode, i == 0,
                                                            show_iterations=selection != "val")])
    return lines


# ---------------------------------------------------------------- tables

def render_lines(header: list[str], align: list[str], cells: list[list[str]]) -> list[str]:
    """Header, alignment row and body, right-aligned to the seed's column widths (wider if a cell needs it).
    A cell may hold text from a run's files (a setting, a precision): each is printable, one line."""
    header, align, cells = [printable(c) for c in header], align, [[printable(c) for c in row] for row in cells]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header) - 1)]

    def line(row: list[str]) -> str:
        padded = [cell.rjust(w) for cell, w in zip(row, widths)]
        return ("| " + " | ".join([*padded, row[-1]])).rstrip()

    return [line(header), line(align), *(line(c) for c in cells)]


def table_header(rows: list[Row], selection: str,
                 columns: tuple[str, ...] = DEFAULT_COLUMNS) -> tuple[list[str], list[str]]:
    """The seed's columns (or --columns), with the settings that tell rows apart after # Params (and the
    selection mode)."""
    settings = [SETTING_LABELS.get(key, key) for key, _ in rows[0].settings]
    shown = ["selection"] if selection == "all" else []
    header = [*HEADER[:3], *settings, *shown, *columns, HEADER[-1]]
    align = [*ALIGN[:3], *["-:"] * len(settings), *[":-"] * len(shown), *[":-:"] * len(columns), ALIGN[-1]]
    return header, align


def render_table(rows: list[Row], compare: bool = False, selection: str = "val",
                 columns: tuple[str, ...] = DEFAULT_COLUMNS) -> str:
    """One `### <data_name>` section in the seed's markdown format (and, under a set that validates on its
    test set, a line saying so)."""
    cells = [line for i, row in enumerate(rows)
             for line in row_lines(row, rows[i - 1] if i else None, rows, selection, compare, columns)]
    note = ["", val_is_test_note(rows[0].data_name) + "."] if validates_on_test(rows[0].data_name) else []
    heading = f"### {printable(rows[0].data_name)}"
    return "\n".join([heading, *render_lines(*table_header(rows, selection, columns), cells), *note])


def render_tables(runs: list[Run | dict], compare: bool = False, selection: str = "val",
                  select_by: str | None = None, columns: tuple[str, ...] = DEFAULT_COLUMNS) -> str:
    """All dataset sections, separated by a blank line as in seed-results.md, and what ± means where used."""
    tables = group_rows(runs)
    if select_by == "val":
        tables = {name: select_by_val(rows) for name, rows in tables.items()}
    text = "\n\n".join(render_table(rows, compare, selection, columns) for rows in tables.values())
    if any(len(row.runs) > 1 for rows in tables.values() for row in rows):
        text += f"\n\n{INTERVAL_NOTE}."
    if SHAKY in text:
        text += f"\n{shaky_note()}."
    return text
