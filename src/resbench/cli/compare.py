"""`resbench compare`: each run beside the reference's own run of its cell, with a verdict (results/compare.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resbench.console import log, printable, say
from resbench.errors import ResbenchError
from resbench.results.compare import as_json, match_runs, render_markdown
from resbench.runs.reader import find_run_folders
from resbench.runs.schema import SUMMARY


def run(args: argparse.Namespace) -> int:
    runs = find_run_folders(args.runs)
    if not runs:
        raise ResbenchError(f"no run folders (metrics.jsonl with config.json) in {', '.join(map(str, args.runs))}")
    for run in runs:
        if run.status == "unknown":  # else a finished run would pass for one still going, without a word
            log(f"warning: {printable(run.path / SUMMARY)} cannot be read: the run counts as unfinished until it "
                "is restored")
    cells, unmatched = match_runs(runs)
    if args.json:
        say(json.dumps(as_json(cells, unmatched), indent=2))
    else:
        say(render_markdown(cells, unmatched, curves=not args.brief), end="")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench compare RUN_OR_RUNS_DIR... [--json] [--brief]`."""
    p = subparsers.add_parser("compare", help="each run beside the reference's own run, curve by curve, with a verdict",
                              description="Match each run (finished or still going) to the reference's run of the same "
                                          "dataset, depth, width, weight decay and precision, and compare val/acc, "
                                          "trn/loss and w_norm at each evaluation and the final figures, with one "
                                          "verdict per cell.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_RUNS_DIR",
                   help="a run folder, or a folder searched recursively for run folders")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--brief", action="store_true", help="the verdict tables only, without the per-evaluation tables")
    p.set_defaults(func=run)
    return p
