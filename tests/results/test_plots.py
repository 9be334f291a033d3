"""`resbench plot` (results/plots.py): the curves and the figures beside the reference, their panels, and runs
that diverged, are damaged or hostile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hand_runs import (
    assert_pngs,
    diverged_summary,
    seeds_and_compare_summaries,
    summary,
    write_hand_run,
)

from conftest import fails_if_blocked


def test_plot_writes_curves_and_reference_figures(tmp_path, cli):
    for i, s in enumerate(seeds_and_compare_summaries()):
        write_hand_run(tmp_path / "runs" / s["data_name"] / f"run{i}", s)
    proc = cli("plot", tmp_path / "runs", "--out", tmp_path / "figs", check=True)
    expected = {"CIFAR10_x32_curves.png", "CIFAR10_x32_vs_reference.png", "Digits_x32_curves.png"}  # no published Digits
    assert {p.name for p in (tmp_path / "figs").iterdir()} == expected
    assert sorted(proc.stdout.split()) == sorted(str(tmp_path / "figs" / name) for name in expected)
    assert_pngs(list((tmp_path / "figs").iterdir()))


def drawn_curves(runs: Path, monkeypatch) -> dict[str, object]:
    """The panels of the curves figure `resbench plot` draws for `runs`, by title (after the dataset's name)."""
    from resbench.results import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda plt, fig, path: figures.append(fig))
    plots.write_plots(runs, runs / "plots")
    [figure] = figures
    plots.pyplot().close(figure)
    return {ax.get_title().partition(": ")[2]: ax for ax in figure.axes if ax.get_title()}


def curve_run(run: Path, seed: int, val_acc: list[float], tested: bool = True, **config) -> None:
    """A run folder of evaluations every 100 iterations with the figures every panel draws (the test
    split's at every evaluation only if `tested`: older runs recorded it where validation improved)."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data_name": "Digits_x32", "seed": seed, **config}))
    records = [{"iter": 100 * (i + 1), "trn_loss": 1.0 / (i + 1), "trn_lr": 0.05, "trn_w_norm": 30.0 - i,
                "val_acc": acc, "val_nll": 1.0 - acc, **({"tst_acc_at_eval": acc} if tested else {})}
               for i, acc in enumerate(val_acc)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_panels_have_axis_labels_test_accuracy_weight_norm_the_schedule_and_bands_within_range(
        tmp_path, monkeypatch):
    """Issue 39: no axis labels, no tst/acc or w_norm panel, the lr as jagged window means, bands past 1."""
    from resbench.settings.config import TrainConfig, learning_rate

    curve_run(tmp_path / "a", 1, [0.5, 0.9, 0.99, 0.999, 0.999, 0.999, 0.999, 0.999], optim_ni=800)
    curve_run(tmp_path / "b", 2, [0.5, 0.7, 0.98, 0.9, 0.8, 0.7, 0.6, 0.5], optim_ni=800)
    panels = drawn_curves(tmp_path, monkeypatch)
    assert list(panels) == ["val/acc", "val/acc, last quarter", "tst/acc", "val/nll", "trn/loss (log)", "w_norm",
                            "learning rate"]
    assert all(ax.get_xlabel() == "iteration" and ax.get_ylabel() for ax in panels.values())
    [schedule] = panels["learning rate"].get_lines()
    steps = [int(x) - 1 for x in schedule.get_xdata()]  # drawn at iteration = updates done
    assert list(schedule.get_ydata()) == [learning_rate(s, TrainConfig(optim_ni=800)) for s in steps]
    assert 80 in steps and max(schedule.get_ydata()) == 0.1  # the warm-up's peak, which no window mean reaches
    for title in ("val/acc", "tst/acc"):
        [band] = panels[title].collections
        assert max(y for path in band.get_paths() for _, y in path.vertices) == 1.0  # the mean + std passes 1


def test_plot_leaves_out_a_panel_it_has_no_figures_for(tmp_path, monkeypatch):
    """A run of one evaluation drew an empty `last quarter` panel (issue 39); an older run has no tst/acc."""
    curve_run(tmp_path / "short" / "run", 1, [0.3])
    panels = drawn_curves(tmp_path / "short", monkeypatch)
    assert "val/acc, last quarter" not in panels and "tst/acc" in panels and len(panels) == 6
    curve_run(tmp_path / "older" / "run", 2, [0.3, 0.4, 0.5, 0.6], tested=False)
    assert list(drawn_curves(tmp_path / "older", monkeypatch)) == [
        "val/acc", "val/acc, last quarter", "val/nll", "trn/loss (log)", "w_norm", "learning rate"]


def test_plot_marks_runs_that_diverged_before_evaluating(tmp_path, cli):
    runs = tmp_path / "runs"
    write_hand_run(runs / "ok", summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5))
    write_hand_run(runs / "diverged", diverged_summary(summary("Digits_x32", 14, 1, "fp32", 170_000, 0, 0, 0)), 0)
    proc = cli("plot", runs, "--out", tmp_path / "figs", check=True)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["Digits_x32_curves.png"]
    assert proc.stderr == ""


def test_plot_skips_damaged_runs_with_one_warning_each(tmp_path, cli):
    runs = tmp_path / "runs"
    s = summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5)
    for name in ("ok", "truncated", "no_config", "bad_record", "bad_summary"):
        write_hand_run(runs / name, s)
    with open(runs / "truncated" / "metrics.jsonl", "a") as f:
        f.write('{"iter": 5')
    (runs / "no_config" / "config.json").unlink()
    with open(runs / "bad_record" / "metrics.jsonl", "a") as f:
        f.write("[1]\n")
    (runs / "bad_summary" / "summary.json").write_text("{bad")
    proc = cli("plot", runs, "--out", tmp_path / "figs", check=True)
    assert_pngs(list((tmp_path / "figs").iterdir()))
    assert proc.stderr.splitlines() == [
        f"warning: skipping damaged run folder {runs / 'bad_record'}: metrics.jsonl line 5 is not a JSON object",
        f"warning: skipping damaged run folder {runs / 'no_config'}: it has no config.json",
        (f"warning: skipping damaged run folder {runs / 'bad_summary'}: summary.json is unreadable "
         "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ]


def test_plot_out_that_cannot_be_a_folder_is_one_error_line(tmp_path, cli):
    write_hand_run(tmp_path / "runs" / "ok", summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5))
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "plots"):
        proc = cli("plot", tmp_path / "runs", "--out", out)
        assert proc.returncode == 2
        assert proc.stderr == (f"error: cannot write the plots to {out} (a file is in the way); "
                               "pass --out a folder you can write\n")


def test_plot_draws_nan_and_infinite_figures_and_a_name_of_100000_characters(tmp_path, capsys):
    from resbench.cli.main import main

    runs = tmp_path / "runs"
    write_hand_run(runs / "a", summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5))
    with open(runs / "a" / "metrics.jsonl", "a") as f:
        f.write('{"iter": 500, "val_acc": NaN, "trn_loss": Infinity, "val_nll": -Infinity}\n')
    write_hand_run(runs / "b", summary("\x1b" + "A" * 100_000, 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5))
    with fails_if_blocked(120, "matplotlib is laying out a title of 100,000 characters"):
        assert main(["plot", str(runs), "--out", str(tmp_path / "figs")]) == 0
    assert capsys.readouterr().err == ""
    assert_pngs(list((tmp_path / "figs").iterdir()))


def test_plot_never_writes_through_a_planted_plots_link(tmp_path, capsys):
    from resbench.cli.main import main

    runs, outside = tmp_path / "runs", tmp_path / "outside"
    write_hand_run(runs / "ok", summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5))
    outside.mkdir()
    (runs / "plots").symlink_to(outside)
    assert main(["plot", str(runs)]) == 2
    assert capsys.readouterr().err == (f"error: {runs / 'plots'}: a symbolic link stands there; resbench never writes "
                                       "through one; remove it, or name the folder to write with --out\n")
    assert list(outside.iterdir()) == []


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):

    from resbench.errors import ResbenchError
    from resbench.results.plots import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ResbenchError, match=r"pip install 'resbench\[plot\]'"):
        pyplot()


def test_plot_file_names_from_run_files_stay_inside_out(tmp_path):
    from resbench.results.plots import write_plots

    runs = tmp_path / "runs"
    for i, name in enumerate(["../../../escaped", str(tmp_path / "absolute"), ".hidden"]):
        write_hand_run(runs / f"run{i}", summary(name, 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5))
    out = tmp_path / "out" / "figs"
    written = write_plots(runs, out)
    # No published figure for these names: one learning-curve figure each, all inside --out.
    assert len(written) == 3 and {path.parent for path in tmp_path.rglob("*.png")} == {out}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in ("_.._.._escaped", str(tmp_path / "absolute").replace("/", "_"), "hidden")
        for kind in ("curves",))
    assert_pngs(written)
