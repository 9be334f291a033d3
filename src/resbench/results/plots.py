"""`resbench plot`: PNG figures of the runs below a folder, drawn to be read.

Per dataset: `<data_name>_curves.png` (validation accuracy, the same zoomed on the last quarter,
test accuracy, validation NLL, training loss, weight norm and the learning-rate schedule against
iterations; one line per configuration, the mean and a ±std band where several seeds share it, a
marker at each evaluation, the legend in a panel of its own; a panel no run has figures for is left
out), `<data_name>_vs_reference.png` (ours − published per configuration, with the 95% interval of
our mean as error bar and n), and with `--compare reference` `<data_name>_curves_vs_reference.png`
(our curves over the reference's: val_acc, trn_loss and w_norm, one row of panels per cell). Bands
and error bars stop where the figure does (an accuracy at 0 and 1, a loss at 0: `figure_range`).
"""

from __future__ import annotations

import io
import math
import re
import statistics
from pathlib import Path
from typing import Any

from resbench.console import printable
from resbench.errors import ResbenchError
from resbench.files import UnsafeFileError, open_own_file, own_folder
from resbench.results.compare import Cell, match_runs
from resbench.results.noise import published_figure
from resbench.results.reference import dataset_sort_key, precision_sort_key, shape_sort_key
from resbench.results.stats import figure_range, spread
from resbench.results.table import (
    MINUS,
    SETTING_LABELS,
    Row,
    comparable,
    group_rows,
    setting_value,
    settings_sort_key,
    varying_settings,
)
from resbench.runs.reader import Run, find_run_folders, find_runs, runs_folder
from resbench.settings.config import TrainConfig, learning_rate

DPI = 100
PLOTS_DIR = "plots"  # below RUNS_DIR, where the figures go by default
ZOOM_FRACTION = 0.25  # the zoomed accuracy panel shows the last quarter of the iterations
SCHEDULE_POINTS = 400  # steps at which a run's learning-rate schedule is drawn


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; plots are an optional extra of the package."""
    try:
        import matplotlib
    except ImportError:
        raise ResbenchError("plots need matplotlib: pip install 'resbench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def unwritable(path: Path, exc: OSError) -> ResbenchError:
    """The one-line error for an --out that cannot hold the figures (a file in the way, no permission, full disk)."""
    in_the_way = isinstance(exc, (FileExistsError, NotADirectoryError))
    reason = "a file is in the way" if in_the_way else printable(exc.strerror or exc)
    return ResbenchError(f"cannot write the plots to {path} ({reason}); pass --out a folder you can write")


def file_stem(name: str) -> str:
    """A dataset name read from a run's files, made a plain file name: it is data, never a path, so
    `../../x` or `/tmp/x` cannot place a figure outside --out (every character but letters,
    digits, `.`, `_` and `-` becomes `_`, and a leading dot is dropped)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:100] or "unnamed"


def shown_name(name: str, limit: int = 60) -> str:
    """A name read from a run's files as a figure shows it: printable, and short (matplotlib takes
    minutes to lay out a title of 100,000 characters)."""
    text = printable(name)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def save_figure(plt, fig, path: Path) -> None:
    """Write `fig` as a PNG and close it; a failing write is one clear error line, not a traceback.
    Rendered in memory, then written into a file of our own (never through a link planted there)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight")
        with open_own_file(path) as out:
            out.write(png.getbuffer())
    except OSError as exc:
        raise unwritable(path, exc) from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- curves: means over seeds

def mean_curve(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    """Iterations, mean and sample std (0 for one value) of `key` over the runs that recorded it there."""
    values: dict[int, list[float]] = {}
    for run in runs:
        for record in run.records:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(int(record["iter"]), []).append(float(value))
    iters = sorted(values)
    means = [statistics.fmean(values[i]) for i in iters]
    stds = [statistics.stdev(values[i]) if len(values[i]) > 1 else 0.0 for i in iters]
    return iters, means, stds


def draw_curve(ax, runs: list[Run], key: str, label: str | None = None, **style: Any) -> list[float]:
    """Our mean curve with a marker at each evaluation and, for several runs, a ±std band; the values drawn."""
    iters, means, stds = mean_curve(runs, key)
    if not iters:
        return []
    line, = ax.plot(iters, means, marker="o", markersize=3, linewidth=1.2, label=label, **style)
    if len(runs) > 1:
        least, most = figure_range(key)  # an accuracy's band stops at 1, a loss's at 0
        ax.fill_between(iters, [max(m - s, least) for m, s in zip(means, stds)],
                        [min(m + s, most) for m, s in zip(means, stds)], color=line.get_color(), alpha=0.2,
                        linewidth=0)
    return means


def zoom(ax, values: list[float], margin: float = 0.08) -> None:
    """Fit the y axis to `values` (with a margin) instead of matplotlib's or a fixed 0-1 range."""
    values = [v for v in values if math.isfinite(v)]  # a NaN or infinite figure is not drawn: no axis limit
    if values:
        low, high = min(values), max(values)
        pad = (high - low) * margin or abs(high) * 0.01 or 0.01
        ax.set_ylim(low - pad, high + pad)


def curve_groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """The runs of one dataset grouped as table rows are (configuration and differing settings; seeds
    together), labelled, in the table's order."""
    varying = varying_settings(runs)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        settings = tuple((k, run.settings().get(k)) for k in varying)
        groups.setdefault((run.depth, run.width, run.precision, comparable(settings), settings), []).append(run)
    ordered = sorted(groups.items(), key=lambda item: (shape_sort_key(item[0][0], item[0][1]),
                                                       settings_sort_key(item[0][4]), precision_sort_key(item[0][2])))
    labelled = []
    for (depth, width, precision, _, settings), members in ordered:
        shown = " ".join(setting_label(k, v) for k, v in settings)
        seeds = f", mean ± std of n={len(members)}" if len(members) > 1 else f" ({shown_name(members[0].path.name)})"
        labelled.append((f"R{depth}x{width} {precision} {shown}".rstrip() + seeds, members))
    return labelled


def setting_label(key: str, value: Any) -> str:
    return f"{SETTING_LABELS.get(key, key)} {setting_value(value)}"


# ---------------------------------------------------------------- the figures

# (metrics.jsonl field, title, y axis): the curves' panels, each drawn where some run has its figures.
CURVE_PANELS = (("val_acc", "val/acc", "validation accuracy"),
                ("val_acc", "val/acc, last quarter", "validation accuracy"),
                ("tst_acc_at_eval", "tst/acc", "test accuracy at each evaluation"),
                ("val_nll", "val/nll", "validation NLL"),
                ("trn_loss", "trn/loss (log)", "training loss (mean since the previous evaluation)"),
                ("trn_w_norm", "w_norm", "weight norm, L2 of all parameters\n(mean since the previous evaluation)"),
                ("trn_lr", "learning rate", "the schedule, from each run's settings"))
PANEL_COLUMNS = 4


def schedule(runs: list[Run]) -> tuple[list[int], list[float]]:
    """The learning rate of every update up to the runs' last evaluation, drawn at iteration = updates
    done: the trainer's own schedule from the settings (the records' trn_lr is a window mean, which
    lags the warm-up and the cosine)."""
    cfg = TrainConfig(optim_ni=int(runs[0].setting("optim_ni")), optim_lr=float(runs[0].setting("optim_lr")))
    reached = max((int(r["iter"]) for run in runs for r in run.records), default=0)
    peak = int(0.1 * cfg.optim_ni)  # the warm-up's end, drawn exactly
    steps = sorted({*range(0, reached, max(1, reached // SCHEDULE_POINTS)), reached - 1,
                    *([peak] if peak < reached else [])}) if reached else []
    return [step + 1 for step in steps], [learning_rate(step, cfg) for step in steps]


def panel_values(key: str, zoomed: bool, groups: list[tuple[str, list[Run]]], last: int) -> list[list[float]]:
    """Per group, the figures a panel would draw: the zoomed panel's only in the last quarter, where a line
    needs two evaluations (one marker alone made it look empty on short runs)."""
    if key == "trn_lr":
        return [schedule(members)[1] for _, members in groups]
    curves = [mean_curve(members, key) for _, members in groups]
    if not zoomed:
        return [means for _, means, _ in curves]
    late = [[v for i, v in zip(iters, means) if i >= (1 - ZOOM_FRACTION) * last] for iters, means, _ in curves]
    return late if any(len(values) > 1 for values in late) else [[] for _ in late]


def draw_panel(ax, key: str, zoomed: bool, groups: list[tuple[str, list[Run]]], last: int) -> None:
    """One panel: a line per group, the y axis fitted to the figures (accuracies), log (the loss) or from 0."""
    if key == "trn_lr":
        for label, members in groups:
            ax.plot(*schedule(members), linewidth=1.2, label=label)
        ax.set_ylim(bottom=0)
        return
    for label, members in groups:
        draw_curve(ax, members, key, label=label)
    if key == "trn_loss":
        ax.set_yscale("log")
    elif zoomed:
        ax.set_xlim((1 - ZOOM_FRACTION) * last - 0.02 * last, last * 1.02)
        zoom(ax, [v for values in panel_values(key, True, groups, last) for v in values])
    elif "acc" in key:
        zoom(ax, [v for values in panel_values(key, False, groups, last) for v in values])


def plot_curves(plt, data_name: str, runs: list[Run], path: Path) -> None:
    """The panels of CURVE_PANELS that have figures, against iterations, one line per configuration; the
    next panel holds the legend."""
    groups = curve_groups(runs)
    last = max((r["iter"] for run in runs for r in run.records), default=0)
    panels = []
    for key, title, axis in CURVE_PANELS:
        zoomed = title.endswith("last quarter")
        if any(panel_values(key, zoomed, groups, last)):
            panels.append((key, title, axis, zoomed))
    rows = max(1, math.ceil((len(panels) + 1) / PANEL_COLUMNS))
    fig, axes = plt.subplots(rows, PANEL_COLUMNS, figsize=(4.6 * PANEL_COLUMNS, 4.3 * rows), squeeze=False)
    for (key, title, axis, zoomed), ax in zip(panels, axes.flat):
        draw_panel(ax, key, zoomed, groups, last)
        ax.set(title=f"{shown_name(data_name)}: {title}", xlabel="iteration", ylabel=axis)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[len(panels)].legend(handles, labels, loc="upper left", fontsize="small", frameon=False,
                                  title="configuration (markers: evaluations)")
    save_figure(plt, fig, path)


def difference_points(rows: list[Row], metric: str) -> tuple[list[float], list[float], list[float]]:
    """ours − published per row, and how far the 95% interval of our mean reaches below and above it (0 for
    one run; clipped to what the figure can be, so that an accuracy's bar stops at 1)."""
    diffs, below, above = [], [], []
    for row in rows:
        values, ref = row.values(metric), row.reference_run()
        if not values or ref is None:
            diffs.append(float("nan"))
            below.append(0.0)
            above.append(0.0)
            continue
        summary = spread(values, bounds=figure_range(metric))
        diffs.append(summary.mean - published_figure(ref, metric))
        below.append(0.0 if summary.low is None else summary.mean - summary.low)
        above.append(0.0 if summary.high is None else summary.high - summary.mean)
    return diffs, below, above


DIFFERENCE_PANELS = (("val_acc", "val/acc"), ("tst_acc", "tst/acc"), ("tst_nll", "tst/nll"))
MIN_DIFFERENCE_RANGE = {"val_acc": 0.005, "tst_acc": 0.005, "tst_nll": 0.02}


def plot_vs_reference(plt, rows: list[Row], path: Path) -> None:
    """Ours − published for val/acc, tst/acc and tst/nll, one point per configuration with a reference."""
    labels = [f"R{r.depth}x{r.width} {r.precision}" + "".join(f"\n{setting_label(k, v)}" for k, v in r.settings)
              + f"\nn={len(r.runs)}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(13, 1.3 * len(rows) * 3), 5))
    x = list(range(len(rows)))
    for ax, (metric, title) in zip(axes, DIFFERENCE_PANELS):
        diffs, below, above = difference_points(rows, metric)
        ax.axhline(0, color="grey", linewidth=1)
        ax.errorbar(x, diffs, yerr=[below, above], fmt="o", capsize=4)
        for i, (d, e) in enumerate(zip(diffs, above)):
            if d == d:  # not NaN
                ax.annotate(f"{d:+.3f}".replace("-0.000", "+0.000").replace("-", MINUS), (i, d + e),
                            textcoords="offset points", xytext=(0, 4), ha="center", fontsize="small")
        ax.set_xticks(x, labels, fontsize="small")
        ax.set_xlim(-0.6, len(rows) - 0.4)
        least = MIN_DIFFERENCE_RANGE[metric]  # differences of 0.0002 must not fill the axis
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, -least), max(high, least))
        ax.set(title=f"{title}: ours − published", ylabel=f"{title} difference")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{shown_name(rows[0].data_name)}: our figures (recipe's selection) minus the published ones; "
                 "error bars: 95% Student-t interval of our mean (none for one run)", fontsize="medium")
    save_figure(plt, fig, path)


REFERENCE_PANELS = (("val_acc", "val_acc", "val/acc", "validation accuracy"),
                    ("trn_loss", "trn_loss", "trn/loss (log)", "training loss (window mean)"),
                    ("trn_w_norm", "w_norm", "w_norm", "weight norm (window mean)"))


def plot_reference_curves(plt, data_name: str, cells: list[Cell], path: Path) -> None:
    """Per cell (one row of panels): our val_acc, trn_loss and w_norm over the reference's."""
    fig, axes = plt.subplots(len(cells), 3, figsize=(15, 0.6 + 3.1 * len(cells)), squeeze=False, layout="constrained")
    for row, cell in zip(axes, cells):
        reached = cell.reached
        for ax, (ours_key, their_key, title, axis) in zip(row, REFERENCE_PANELS):
            theirs = [r for r in cell.reference.records if r[their_key] is not None]
            ours = draw_curve(ax, cell.runs, ours_key, label="ours (mean and ±std band over our runs)", color="C0")
            ax.plot([r["iter"] for r in theirs], [r[their_key] for r in theirs], marker="x", markersize=3,
                    linewidth=1, linestyle="--", color="black", label="reference")
            if their_key == "trn_loss":
                ax.set_yscale("log")
            else:
                zoom(ax, ours + [r[their_key] for r in theirs])
            ax.axvline(reached, color="grey", linewidth=0.8, linestyle=":")
            ax.set(title=f"{cell.label}, n={len(cell.runs)}: {title}", xlabel="iteration", ylabel=axis)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(f"{data_name}: ours against the reference's own runs (dotted: the last evaluation we reached)")
    save_figure(plt, fig, path)


def write_plots(runs_dir: Path, out: Path | None = None, compare: bool = False) -> list[Path]:
    """Per dataset: `<name>_curves.png` (every run), `<name>_vs_reference.png` (finished runs with a
    published figure) and, when comparing, `<name>_curves_vs_reference.png`; into `out`, or by default
    RUNS_DIR/plots, a folder of the tool's own (a link planted there is refused: `files.own_folder`)."""
    plt = pyplot()
    trained = find_run_folders([runs_folder(runs_dir)])
    if not trained:
        raise ResbenchError(f"no readable runs (metrics.jsonl with config.json) below {runs_dir}")
    named, below = (out, "") if out is not None else (runs_dir, PLOTS_DIR)
    try:
        out_dir = own_folder(named, below)
    except UnsafeFileError as exc:
        raise ResbenchError(f"{printable(exc.filename)}: {exc.strerror}; remove it, or name the folder to write "
                            "with --out") from None
    except OSError as exc:
        raise unwritable(named / below, exc) from None
    by_dataset: dict[str, list[Run]] = {}
    for run in trained:
        by_dataset.setdefault(run.data_name, []).append(run)
    written = []
    for data_name in sorted(by_dataset, key=dataset_sort_key):
        written.append(out_dir / f"{file_stem(data_name)}_curves.png")
        plot_curves(plt, data_name, by_dataset[data_name], written[-1])
    for data_name, rows in group_rows(find_runs(runs_dir)).items():
        with_reference = [row for row in rows if row.reference_run() is not None]
        if with_reference:
            written.append(out_dir / f"{file_stem(data_name)}_vs_reference.png")
            plot_vs_reference(plt, with_reference, written[-1])
    if compare:
        cells, _ = match_runs(trained)
        for data_name in dict.fromkeys(cell.reference.data_name for cell in cells):
            written.append(out_dir / f"{file_stem(data_name)}_curves_vs_reference.png")
            plot_reference_curves(plt, data_name, [c for c in cells if c.reference.data_name == data_name], written[-1])
    return written
