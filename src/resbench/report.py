"""`resbench table` and `resbench plot`: turn a folder of finished runs into the seed's tables and figures.

The table reproduces seed-results.md character for character when given the seed's figures, so a
reproduction can be diffed against the specification; `--compare reference` writes each
published figure and our difference beside our own, inside the same cell:
`0.921 (ref 0.923, −0.002)`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import ResbenchError
from .reference import ReferenceRow, config_sort_key, dataset_sort_key, reference_lookup

HEADER = ("Depth", "Width", "# Params", "val/acc", "tst/acc", "tst/nll", "misc")
ALIGN = ("-:", "-:", "-:", ":-:", ":-:", ":-:", ":-")
METRICS = ("val_acc", "tst_acc", "tst_nll")
# Settings that legitimately differ between the seeds of one table row.
PER_RUN_SETTINGS = frozenset({"seed", "save", "data_root", "device"})
MINUS = "\u2212"
MISSING = "n/a"  # a cell none of whose runs has the figure (every one diverged before its first evaluation)

# The fields table and plot read, with their JSON types. A run that diverged before its first
# evaluation has null figures; the trainer writes every other field as a value.
NUMBER = (int, float)
SUMMARY_FIELDS = {"data_name": str, "depth": int, "width": int, "precision": str, "params": NUMBER,
                  "wall_seconds": NUMBER, "config": (dict, type(None)),
                  **{metric: (*NUMBER, type(None)) for metric in METRICS}}
CONFIG_FIELDS = {"data_name": str}
RECORD_FIELDS = {"iter": NUMBER, "val_acc": NUMBER, "trn_loss": NUMBER}

T = TypeVar("T")


class DamagedRun(ResbenchError):
    """A results file of one run folder is unreadable or not what the trainer writes.

    `table` and `plot` summarise many runs, so they skip such a folder with one warning line rather
    than lose the whole table to one crashed or hand-edited run.
    """


# ---------------------------------------------------------------- reading run folders

def read_json(path: Path) -> Any:
    """The parsed content of one JSON file of a run folder; DamagedRun if it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedRun(f"it has no {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedRun(f"{path.name} is unreadable ({exc})") from None


def invalid_fields(value: dict, fields: dict[str, type | tuple[type, ...]]) -> list[str]:
    """The keys of `fields` that `value` lacks or holds with another type (a JSON bool is no number)."""
    return [key for key, kind in fields.items()
            if not isinstance(value.get(key), kind) or isinstance(value.get(key), bool)]


def checked_fields(value: Any, fields: dict[str, type | tuple[type, ...]], what: str) -> dict:
    """`value` if it is a JSON object whose `fields` have their types, so later code can index it safely."""
    if not isinstance(value, dict):
        raise DamagedRun(f"{what} is not a JSON object")
    if bad := invalid_fields(value, fields):
        raise DamagedRun(f"{what} lacks a valid {', '.join(bad)}")
    return value


def readable_runs(paths: list[Path], read: Callable[[Path], T]) -> list[tuple[Path, T]]:
    """`read(path)` of every path; a damaged run folder is skipped with one warning line naming it and the fault."""
    found = []
    for path in paths:
        try:
            found.append((path, read(path)))
        except DamagedRun as exc:
            print(f"warning: skipping damaged run folder {path.parent}: {exc}", file=sys.stderr)
    return found


def read_summary(path: Path) -> dict:
    return checked_fields(read_json(path), SUMMARY_FIELDS, path.name)


def find_summaries(runs_dir: Path) -> list[dict]:
    """Every finished run (a folder with a sound summary.json) below `runs_dir`, in path order."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ResbenchError(f"no such runs folder: {runs_dir}")
    return [summary for _, summary in readable_runs(sorted(runs_dir.rglob("summary.json")), read_summary)]


def read_metrics(run_dir: Path) -> list[dict]:
    """The evaluation records of one run (metrics.jsonl), oldest first; empty if none yet.

    An unparsable last line is what a crash in the middle of an append leaves: it is dropped and
    the records before it, each written whole, are kept. Anywhere else it means a damaged file.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        lines = path.read_text().rstrip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"{path.name} is unreadable ({exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise DamagedRun(f"{path.name} line {number} is not JSON") from None
        records.append(checked_fields(record, RECORD_FIELDS, f"{path.name} line {number}"))
    return records


# ---------------------------------------------------------------- grouping runs into rows

@dataclass
class Row:
    """One table row: one configuration, aggregated over the runs (seeds) that share it."""

    data_name: str
    depth: int
    width: int
    precision: str
    summaries: list[dict] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.data_name, self.depth, self.width, self.precision)

    @property
    def params(self) -> int:
        return self.summaries[0]["params"]

    def values(self, metric: str) -> list[float]:
        """The figures of the runs that have one: a run that diverged before its first evaluation has none."""
        return [float(s[metric]) for s in self.summaries if s[metric] is not None]

    def hours(self) -> float:
        return statistics.fmean(self.values("wall_seconds")) / 3600


def group_rows(summaries: list[dict]) -> dict[str, list[Row]]:
    """Rows per dataset, datasets and rows in the seed's order (unknown ones after)."""
    rows: dict[tuple[str, int, int, str], Row] = {}
    for s in summaries:
        key = (s["data_name"], int(s["depth"]), int(s["width"]), s["precision"])
        rows.setdefault(key, Row(*key)).summaries.append(s)
    by_dataset: dict[str, list[Row]] = {}
    for row in sorted(rows.values(), key=lambda r: (dataset_sort_key(r.data_name),
                                                     config_sort_key(r.depth, r.width, r.precision))):
        by_dataset.setdefault(row.data_name, []).append(row)
    return by_dataset


def mixed_settings(row: Row) -> list[str]:
    """Training settings (other than seed and paths) that differ between the runs of one row.

    Averaging runs trained differently would silently blur the table, so the caller warns.
    """
    configs = [s.get("config") or {} for s in row.summaries]
    keys = set().union(*configs) - PER_RUN_SETTINGS
    return sorted(k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1)


# ---------------------------------------------------------------- formatting cells

def format_stat(values: list[float]) -> str:
    """`0.923` for one run, `0.923 ± 0.002` (mean ± sample std) for several, `n/a` for none."""
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def format_difference(ours: float, published: float) -> str:
    """Signed difference of the figures as printed (3 decimals), with a true minus sign."""
    diff = round(ours, 3) - published
    return f"{diff:+.3f}".replace("-0.000", "+0.000").replace("-", MINUS)


def metric_cell(row: Row, metric: str, ref: ReferenceRow | None) -> str:
    values = row.values(metric)
    ours = format_stat(values)
    if ref is None:
        return ours
    published = getattr(ref, metric)
    if not values:
        return f"{ours} (ref {published:.3f})"
    return f"{ours} (ref {published:.3f}, {format_difference(statistics.fmean(values), published)})"


def misc_cell(row: Row, show_precision: bool, ref: ReferenceRow | None) -> str:
    """Precision and wall time (as the seed does for its fp32/fp16 pairs), run count, failures."""
    parts = []
    if show_precision:
        hours = f"{row.hours():.1f} hrs"
        if ref is not None:
            hours += f"; ref {ref.wall_min / 60:.1f} hrs"
        parts.append(f"{row.precision} ({hours})")
    if len(row.summaries) > 1:
        parts.append(f"n={len(row.summaries)}")
    diverged = sum(s.get("status") == "diverged" for s in row.summaries)
    if diverged:
        parts.append(f"{diverged} diverged")
    return ", ".join(parts)


def shows_precision(row: Row, rows: list[Row]) -> bool:
    """The seed names precision and hours on its depth-18 rows; we also do wherever it is not plain fp32."""
    siblings = {r.precision for r in rows if (r.depth, r.width) == (row.depth, row.width)}
    return row.depth == 18 or siblings != {"fp32"}


def row_cells(row: Row, previous: Row | None, rows: list[Row], ref: ReferenceRow | None) -> list[str]:
    """The 7 cells of a row; a precision variant right below its fp32 row leaves Depth/Width/# Params blank."""
    same_config = previous is not None and (previous.depth, previous.width) == (row.depth, row.width)
    config = ["", "", ""] if same_config else [str(row.depth), str(row.width), f"{row.params / 1e6:.2f} M"]
    metrics = [metric_cell(row, m, ref) for m in METRICS]
    return [*config, *metrics, misc_cell(row, shows_precision(row, rows), ref)]


# ---------------------------------------------------------------- tables

def render_lines(cells: list[list[str]]) -> list[str]:
    """Header, alignment row and body, right-aligned to the seed's column widths (wider if a cell needs it)."""
    widths = [max(len(c[i]) for c in [list(HEADER), *cells]) for i in range(len(HEADER) - 1)]

    def line(row: list[str] | tuple[str, ...]) -> str:
        padded = [cell.rjust(w) for cell, w in zip(row, widths)]
        return ("| " + " | ".join([*padded, row[-1]])).rstrip()

    return [line(HEADER), line(ALIGN), *(line(c) for c in cells)]


def render_table(rows: list[Row], compare: bool = False) -> str:
    """One `### <data_name>` section in the seed's markdown format."""
    refs = reference_lookup() if compare else {}
    cells = [row_cells(row, rows[i - 1] if i else None, rows, refs.get(row.key)) for i, row in enumerate(rows)]
    return "\n".join([f"### {rows[0].data_name}", *render_lines(cells)])


def render_tables(summaries: list[dict], compare: bool = False) -> str:
    """All dataset sections, separated by a blank line as in seed-results.md."""
    return "\n\n".join(render_table(rows, compare) for rows in group_rows(summaries).values())


def run_table(args: argparse.Namespace) -> int:
    summaries = find_summaries(args.runs_dir)
    if not summaries:
        raise ResbenchError(f"no finished runs (summary.json) below {args.runs_dir}")
    for rows in group_rows(summaries).values():
        for row in rows:
            if mixed := mixed_settings(row):
                print(f"warning: {row.data_name} R{row.depth}x{row.width} {row.precision} averages runs "
                      f"with different {', '.join(mixed)}", file=sys.stderr)
    print(render_tables(summaries, compare=args.compare == "reference"))
    return 0


def add_table_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench table RUNS_DIR [--compare reference]`."""
    p = subparsers.add_parser("table", help="print finished runs as markdown tables in the published tables' format",
                              description="Print the finished runs below RUNS_DIR as markdown tables in the "
                                          "format of the published tables (docs/reference/seed-results.md), "
                                          "mean ± std over the random seeds of a configuration.")
    p.add_argument("runs_dir", type=Path, help="folder searched recursively for summary.json")
    p.add_argument("--compare", choices=["reference"], default=None,
                   help="write the published figure and our difference beside each of ours: "
                        "`ours (ref published, ours-published)`")
    p.set_defaults(func=run_table)
    return p


# ---------------------------------------------------------------- plots

def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; plots are an optional extra of the package."""
    try:
        import matplotlib
    except ImportError:
        raise ResbenchError("plots need matplotlib: pip install 'resbench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_curve(metrics: Path) -> tuple[str, list[dict]]:
    """The dataset (from config.json beside it) and the evaluation records of one metrics.jsonl."""
    config = checked_fields(read_json(metrics.parent / "config.json"), CONFIG_FIELDS, "config.json")
    return config["data_name"], read_metrics(metrics.parent)


def find_curves(runs_dir: Path) -> dict[str, dict[Path, list[dict]]]:
    """Evaluation records of every run folder (finished or not), per dataset named in its config.json.

    Read before anything is drawn, so a damaged run is skipped rather than failing half-way through the figures.
    """
    by_dataset: dict[str, dict[Path, list[dict]]] = {}
    for metrics, (data_name, records) in readable_runs(sorted(Path(runs_dir).rglob("metrics.jsonl")), read_curve):
        by_dataset.setdefault(data_name, {})[metrics.parent] = records
    return dict(sorted(by_dataset.items(), key=lambda item: dataset_sort_key(item[0])))


def unwritable(path: Path, exc: OSError) -> ResbenchError:
    """The one-line error for an --out that cannot hold the figures (a file in the way, no permission, full disk)."""
    in_the_way = isinstance(exc, (FileExistsError, NotADirectoryError))
    reason = "a file is in the way" if in_the_way else exc.strerror or exc
    return ResbenchError(f"cannot write the plots to {path} ({reason}); pass --out a folder you can write")


def save_figure(plt, fig, path: Path) -> None:
    """Write `fig` as a PNG and close it; a failing write is one clear error line, not a traceback."""
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise unwritable(path, exc) from None
    finally:
        plt.close(fig)


def plot_curves(plt, data_name: str, runs: dict[Path, list[dict]], path: Path) -> None:
    """Validation accuracy and training loss against iterations, one line per run."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run_dir, records in runs.items():
        iters = [r["iter"] for r in records]
        acc_ax.plot(iters, [r["val_acc"] for r in records], label=run_dir.name)
        loss_ax.plot(iters, [r["trn_loss"] for r in records], label=run_dir.name)
    acc_ax.set(title=f"{data_name}: validation accuracy", xlabel="iteration", ylabel="val/acc")
    loss_ax.set(title=f"{data_name}: training loss", xlabel="iteration", ylabel="trn/loss", yscale="log")
    acc_ax.legend(fontsize="small")
    save_figure(plt, fig, path)


def plot_vs_reference(plt, rows: list[Row], path: Path) -> None:
    """Our final test accuracy (mean, std as error bar) beside the published one, per configuration."""
    refs = reference_lookup()
    labels = [f"R{r.depth}x{r.width} {r.precision}" for r in rows]
    values = [r.values("tst_acc") for r in rows]  # empty where every run diverged before evaluating
    ours = [statistics.fmean(v) if v else float("nan") for v in values]
    errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
    published = [refs[r.key].tst_acc if r.key in refs else float("nan") for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4.5))
    for offset, heights, label in ((-0.2, ours, "ours"), (0.2, published, "published")):
        bars = ax.bar([i + offset for i in x], heights, width=0.4, label=label,
                      yerr=errors if label == "ours" else None)
        ax.bar_label(bars, fmt="%.3f", fontsize="small")  # differences of 0.01 are invisible as bars
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set(title=f"{rows[0].data_name}: test accuracy of the best-val checkpoint", ylabel="tst/acc")
    ax.legend(loc="lower right")
    save_figure(plt, fig, path)


def write_plots(runs_dir: Path, out_dir: Path) -> list[Path]:
    """Per dataset: `<name>_curves.png` (every run) and `<name>_vs_reference.png` (finished runs)."""
    plt = pyplot()
    curves = find_curves(runs_dir)
    if not curves:
        raise ResbenchError(f"no readable runs (metrics.jsonl with config.json) below {runs_dir}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(out_dir, exc) from None
    written = []
    for data_name, runs in curves.items():
        written.append(out_dir / f"{data_name}_curves.png")
        plot_curves(plt, data_name, runs, written[-1])
    for data_name, rows in group_rows(find_summaries(runs_dir)).items():
        written.append(out_dir / f"{data_name}_vs_reference.png")
        plot_vs_reference(plt, rows, written[-1])
    return written


def run_plot(args: argparse.Namespace) -> int:
    for path in write_plots(args.runs_dir, args.out or args.runs_dir / "plots"):
        print(path)
    return 0


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench plot RUNS_DIR [--out DIR]`."""
    p = subparsers.add_parser("plot", help="PNG figures: learning curves and ours vs the published accuracy",
                              description="Write PNG figures for the runs below RUNS_DIR: per dataset, "
                                          "validation accuracy and training loss against iterations, and "
                                          "our test accuracy beside the published one. Needs matplotlib.")
    p.add_argument("runs_dir", type=Path, help="folder searched recursively for run folders")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUNS_DIR/plots)")
    p.set_defaults(func=run_plot)
    return p
