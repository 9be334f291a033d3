"""`resbench table RUNS_DIR`: the finished runs below a folder as the seed's markdown tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from resbench.console import say
from resbench.errors import ResbenchError
from resbench.results.columns import DEFAULT_COLUMNS, parse_columns
from resbench.results.table import SELECTIONS, render_tables
from resbench.runs.reader import find_runs


def run(args: argparse.Namespace) -> int:
    runs = find_runs(args.runs_dir, with_records=args.selection != "val")
    if not runs:
        raise ResbenchError(f"no finished runs (summary.json) below {args.runs_dir}")
    table = render_tables(runs, compare=args.compare == "reference", selection=args.selection,
                          select_by=args.select_by, columns=parse_columns(args.columns))
    say(table)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench table RUNS_DIR [--compare reference] [--selection val|last|test|all] [--select_by val]`."""
    p = subparsers.add_parser("table", help="print finished runs as markdown tables in the published tables' format",
                              description="Print the finished runs below RUNS_DIR as markdown tables in the "
                                          "format of the published tables (docs/reference/seed-results.md): "
                                          "mean ± std [95% Student-t interval] over the random seeds of a row, "
                                          "runs with other settings in rows of their own.")
    p.add_argument("runs_dir", type=Path, help="folder searched recursively for summary.json")
    p.add_argument("--compare", choices=["reference"], default=None,
                   help="write the published figure and our difference beside each of ours: "
                        "`ours (ref published, ours-published)`")
    p.add_argument("--selection", choices=[*SELECTIONS, "all"], default="val",
                   help="which evaluation of each run: val = best validation accuracy (the recipe's), "
                        "last = the last evaluation, test = best test accuracy (optimistic), all = the three")
    p.add_argument("--select_by", choices=["val"], default=None,
                   help="per configuration, keep only the setting (e.g. weight decay) with the best mean "
                        "validation accuracy, and name it")
    p.add_argument("--columns", default=",".join(DEFAULT_COLUMNS),
                   help="comma-separated figures: val/acc, tst/acc, tst/nll (summary.json), ece, brier, "
                        "c/acc, c/nll, c/ece, ood/auroc, ood/aupr_in, ood/aupr_out, ood/fpr95 (eval.json of best.pt, "
                        "written by `resbench eval RUNS_DIR` or `eval --write_eval`); ood/auroc@SVHN for one set, "
                        ":energy for a score. --selection changes the summary figures only")
    p.set_defaults(func=run)
    return p

