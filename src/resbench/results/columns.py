"""`resbench table --columns`: the figures a table shows, from each run's summary.json and eval.json.

- ``val/acc``, ``tst/acc``, ``tst/nll``: the training run's own figures (summary.json), the
  seed's three columns and the default.
- ``ece``, ``brier``: of the test split at T=1, from the eval.json that ``resbench eval --write_eval``
  (or ``resbench eval RUNS_DIR``) wrote for best.pt.
- ``c/acc`` (mCA), ``c/nll``, ``c/ece``: means over the benchmark corruptions and 5 severities.
- ``ood/auroc``, ``ood/aupr_in``, ``ood/aupr_out``, ``ood/fpr95``: of the max-softmax score,
  averaged over the OOD sets of eval.json; ``ood/auroc@SVHN`` for one set, ``ood/auroc:energy``
  (or ``:entropy``) for another score, or both: ``ood/fpr95@SVHN:energy``.
"""

from __future__ import annotations

import statistics
from typing import Any

from resbench.errors import ResbenchError
from resbench.runs.schema import OOD_METRICS, OOD_SCORES

SUMMARY_COLUMNS = {"val/acc": "val_acc", "tst/acc": "tst_acc", "tst/nll": "tst_nll"}
DEFAULT_COLUMNS = tuple(SUMMARY_COLUMNS)
EVAL_COLUMNS = ("ece", "brier", "c/acc", "c/nll", "c/ece")


def parse_columns(text: str) -> tuple[str, ...]:
    """The comma-separated column names of --columns, each checked."""
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    for column in columns:
        if column not in SUMMARY_COLUMNS and column not in EVAL_COLUMNS and ood_column(column) is None:
            raise ResbenchError(f"unknown --columns entry {column!r}: use "
                                f"{', '.join([*SUMMARY_COLUMNS, *EVAL_COLUMNS])} or ood/METRIC[@SET][:SCORE] with "
                                f"METRIC one of {', '.join(OOD_METRICS)} and SCORE one of {', '.join(OOD_SCORES)}")
    if not columns:
        raise ResbenchError("--columns names no column")
    return columns


def ood_column(column: str) -> tuple[str, str | None, str] | None:
    """(metric, OOD set or None for the mean over sets, score) of ``ood/METRIC[@SET][:SCORE]``."""
    if not column.startswith("ood/"):
        return None
    rest, _, score = column[4:].partition(":")
    metric, _, name = rest.partition("@")
    score = score or "msp"
    return (metric, name or None, score) if metric in OOD_METRICS and score in OOD_SCORES else None


def column_value(figures: dict | None, column: str) -> float | None:
    """One run's figure for an eval.json column, or None where the run does not have it (the summary.json
    columns depend on `table --selection`: `report.Row.values` reads them)."""
    try:
        if column in ("ece", "brier"):
            return float(figures[column])
        if column.startswith("c/"):
            return float(figures["corruptions"]["mean"][column[2:]])
        metric, name, score = ood_column(column)  # type: ignore[misc]
        sets: dict[str, Any] = figures["ood"]
        chosen = [sets[name]] if name else list(sets.values())
        return statistics.fmean(float(s[score][metric]) for s in chosen)
    except (KeyError, TypeError, ValueError, statistics.StatisticsError):
        return None
