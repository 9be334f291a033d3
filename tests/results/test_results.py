"""Results: `resbench table`, `plot` and `eval`, on hand-written run folders and on two real runs
(the sweep itself: tests/sweep/test_sweep.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sweep import DIGITS_GRID, plan_lines

from conftest import fails_if_blocked
from resbench.evaluate.metrics import brier_score, calibration_metrics, expected_calibration_error, fit_temperature, nll
from resbench.results.reference import imagenet_rows, reference_rows
from resbench.results.table import render_tables

# ---------------------------------------------------------------- hand-written summaries and golden tables

SEED_CIFAR10 = """\
### CIFAR10_x32
| Depth | Width | # Params | val/acc | tst/acc | tst/nll | misc
|    -: |    -: |       -: |     :-: |     :-: |     :-: | :-
|    20 |     1 |   0.27 M |   0.923 |   0.924 |   0.278 |
|    20 |     2 |   1.08 M |   0.947 |   0.944 |   0.212 |
|    20 |     4 |   4.30 M |   0.954 |   0.948 |   0.193 |
|    32 |     1 |   0.47 M |   0.932 |   0.931 |   0.289 |
|    44 |     1 |   0.66 M |   0.936 |   0.933 |   0.297 |
|    56 |     1 |   0.86 M |   0.937 |   0.934 |   0.304 |
|    18 |     1 |  11.17 M |   0.952 |   0.948 |   0.199 | fp32 (0.6 hrs)
|       |       |          |   0.953 |   0.951 |   0.193 | fp16 (0.4 hrs)"""

# The 95% interval of three seeds 0.921, 0.923, 0.925 by hand: mean 0.923, s = 0.002, t(0.975, 2) = 4.303,
# 0.923 ± 4.303 * 0.002 / sqrt(3) = 0.923 ± 0.00497 -> [0.918, 0.928].
SEEDS_AND_COMPARE = """\
### CIFAR10_x32
| Depth | Width | # Params |                                          val/acc |                                          tst/acc |                                          tst/nll | misc
|    -: |    -: |       -: |                                              :-: |                                              :-: |                                              :-: | :-
|    20 |     1 |   0.27 M | 0.923 ± 0.002 [0.918, 0.928] (ref 0.923, +0.000) | 0.920 ± 0.006 [0.905, 0.935] (ref 0.924, −0.004) | 0.300 ± 0.000 [0.300, 0.300] (ref 0.278, +0.022) | n=3
|    18 |     1 |  11.17 M |                        0.950 (ref 0.952, −0.002) |                        0.948 (ref 0.948, +0.000) |                        0.199 (ref 0.199, +0.000) | fp32 (0.5 hrs; ref 0.6 hrs)

### Digits_x32
| Depth | Width | # Params | val/acc | tst/acc | tst/nll | misc
|    -: |    -: |       -: |     :-: |     :-: |     :-: | :-
|     8 |     1 |   0.08 M |   0.500 |   0.400 |   1.500 |

mean ± sample std [95% Student-t interval of the mean, clipped to what the figure can be: [0, 1] for an accuracy, ≥ 0 for an NLL] over the n runs (seeds) of a row; one run: its figure."""


def summary(data_name: str, depth: int, width: int, precision: str, params: int, val_acc: float,
            tst_acc: float, tst_nll: float, wall_seconds: float = 60.0, seed: int = 42) -> dict:
    """A summary.json as the trainer writes it (only the fields the table reads, plus config)."""
    return {"data_name": data_name, "depth": depth, "width": width, "precision": precision, "params": params,
            "best_val_acc": val_acc, "tst_acc": tst_acc, "tst_nll": tst_nll, "wall_seconds": wall_seconds,
            "status": "finished", "config": {"seed": seed, "optim_ni": 48000}}


def seed_summaries(data_name: str) -> list[dict]:
    """The seed's own figures as summaries, in a scrambled order (the table must restore the seed's)."""
    rows = [r for r in reference_rows() if r.data_name == data_name][::-1]
    return [summary(r.data_name, r.depth, r.width, r.precision, r.params, r.val_acc, r.tst_acc, r.tst_nll,
                    wall_seconds=r.wall_min * 60) for r in rows]


def seeds_and_compare_summaries() -> list[dict]:
    return [
        summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5),
        *(summary("CIFAR10_x32", 20, 1, "fp32", 272_464, val, tst, 0.3, seed=seed)
          for seed, val, tst in ((1, 0.921, 0.914), (2, 0.923, 0.920), (3, 0.925, 0.926))),
        summary("CIFAR10_x32", 18, 1, "fp32", 11_173_952, 0.95, 0.948, 0.199, wall_seconds=1800),
    ]


def write_runs(runs_dir: Path, summaries: list[dict]) -> None:
    for i, s in enumerate(summaries):
        run = runs_dir / s["data_name"] / f"run{i}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(s))


def test_reference_table_is_the_seed_table():
    rows = reference_rows()
    assert len(rows) == 26
    assert (rows[0].data_name, rows[0].params, rows[0].tst_nll) == ("CIFAR10_x32", 272_464, 0.278)
    assert (rows[-1].precision, rows[-1].wall_min) == ("fp16", 66.9)


def test_table_of_the_seed_figures_is_the_seed_table():
    assert render_tables(seed_summaries("CIFAR10_x32")) == SEED_CIFAR10


def test_table_mean_std_and_compare_reference():
    assert render_tables(seeds_and_compare_summaries(), compare=True) == SEEDS_AND_COMPARE


def test_a_set_that_validates_on_its_test_set_says_so_under_its_table_only():
    runs = [summary("ImageNet1k_x32", 18, 1, "fp16", 11_680_832, 0.546, 0.546, 2.103),
            *seed_summaries("CIFAR10_x32")]
    cifar, imagenet = render_tables(runs).split("\n\n### ")
    assert cifar == SEED_CIFAR10  # character for character, without the note
    assert imagenet.splitlines()[-1] == ("val = test: ImageNet1k_x32 validates on its test set (the official validation "
                                         "set), as the reference does; its val/acc is a test accuracy and its best "
                                         "checkpoint is chosen on the test set (test-set selection, as `resbench table "
                                         "--selection test` names it).")


def test_a_table_of_two_runs_keeps_its_intervals_within_what_a_figure_can_be_and_flags_them():
    """n = 2 printed `tst/acc 0.944 ± 0.079 [0.239, 1.650]` and NLL intervals below 0 (issue 39)."""
    runs = [summary("CIFAR10_x32", 20, 1, "fp32", 272_464, 0.95, tst, nll, seed=seed)
            for seed, tst, nll in ((1, 0.988, 0.05), (2, 0.9, 0.4))]
    text = render_tables(runs)
    assert "| 0.950 ± 0.000 [0.950, 0.950]† | 0.944 ± 0.062 [0.385, 1.000]† | 0.225 ± 0.247 [0.000, 2.449]† | n=2" in text
    assert text.endswith("\n† n = 2: the interval of 2 runs spans ±12.7 standard errors (Student's t, 1 degree of "
                         "freedom) and says little; 3 runs or more narrow it.")
    assert "†" not in render_tables(seeds_and_compare_summaries())  # n = 3: no mark


IMAGENET_X32_BESIDE_THE_REFERENCE = """\
### ImageNet1k_x32
| Depth | Width | # Params |                   val/acc |                   tst/acc |                   tst/nll | misc
|    -: |    -: |       -: |                       :-: |                       :-: |                       :-: | :-
|    18 |     1 |  11.68 M | 0.546 (ref 0.546, +0.000) | 0.546 (ref 0.546, +0.000) | 2.103 (ref 2.103, +0.000) | fp16 (1.1 hrs; ref 2.1 hrs on 2 GPUs)
|    34 |     1 |  21.79 M | 0.573 (ref 0.573, +0.000) | 0.573 (ref 0.573, +0.000) | 2.102 (ref 2.102, +0.000) | fp16 (2.0 hrs; ref 3.9 hrs on 2 GPUs)
|    50 |     1 |  25.55 M | 0.613 (ref 0.613, +0.000) | 0.613 (ref 0.613, +0.000) | 1.946 (ref 1.946, +0.000) | fp16 (2.8 hrs; ref 5.7 hrs on 2 GPUs)

val = test: ImageNet1k_x32 validates on its test set (the official validation set), as the reference does; its val/acc is a test accuracy and its best checkpoint is chosen on the test set (test-set selection, as `resbench table --selection test` names it)."""


def test_table_puts_the_published_imagenet_rows_beside_ours():
    """Ours with the reference's figures and half its wall time: the published row (its README's val/acc,
    tst/acc the same since validation is the test set, its log's tst/nll) and its hours on its 2 GPUs."""
    config = {"seed": 42, "batch_size": 1024, "optim_ni": 128_000, "optim_lr": 0.4, "optim_weight_decay": 1e-4}
    summaries = [{**summary(r.data_name, r.depth, r.width, r.precision, r.params, r.val_acc, r.tst_acc, r.tst_nll,
                            wall_seconds=r.wall_min * 30), "config": config}
                 for r in imagenet_rows()[::-1] if r.data_name == "ImageNet1k_x32"]
    assert render_tables(summaries, compare=True) == IMAGENET_X32_BESIDE_THE_REFERENCE


TINY_WITH_TWO_RUN_LENGTHS = """\
### TinyImageNet200_x64
| Depth | Width | # Params | iters | val/acc | tst/acc | tst/nll | misc
|    -: |    -: |       -: |    -: |     :-: |     :-: |     :-: | :-
|    20 |     1 |   0.28 M | 48000 |   0.506 |   0.508 |   2.011 |
|    20 |     2 |   1.10 M | 48000 |   0.576 |   0.570 |   1.775 |
|    20 |     4 |   4.35 M | 48000 |   0.611 |   0.598 |   1.731 |
|    18 |     1 |  11.27 M |  2000 |   0.643 |   0.642 |   1.631 | fp16 (1.1 hrs)
|       |       |          | 48000 |   0.648 |   0.647 |   1.635 | fp32 (2.1 hrs)
|       |       |          |       |   0.643 |   0.642 |   1.631 | fp16 (1.1 hrs)"""


def test_table_cli_keeps_runs_with_other_settings_in_rows_of_their_own(tmp_path, cli):
    summaries = seed_summaries("TinyImageNet200_x64") + seed_summaries("CIFAR10_x32")
    summaries[0]["config"]["optim_ni"] = 2000  # the fp16 depth-18 row, also run for 2,000 iterations only
    summaries.append(dict(summaries[0], config={"seed": 7, "optim_ni": 48000}))
    write_runs(tmp_path, summaries)
    proc = cli("table", tmp_path, check=True)
    cifar, tiny = proc.stdout.rstrip("\n").split("\n\n")
    assert cifar == SEED_CIFAR10  # no setting differs there: no extra column
    assert tiny == TINY_WITH_TWO_RUN_LENGTHS and proc.stderr == ""


def test_where_a_run_held_its_data_never_makes_a_row_of_its_own():
    runs = [lr_sweep_summary(0.1, seed, 0.92) for seed in (1, 2)]
    for run, placement in zip(runs, ("device", "stream")):
        run["config"]["data_placement"] = placement  # the same batches either way
    assert "n=2" in render_tables(runs) and "stream" not in render_tables(runs)


def lr_sweep_summary(lr: float, seed: int, val: float, wd: float = 0.001) -> dict:
    s = summary("CIFAR10_x32", 20, 1, "fp32", 272_464, val, val - 0.001, 0.3, seed=seed)
    s["config"].update(optim_lr=lr, optim_weight_decay=wd)
    return s


def test_table_tabulates_a_sweep_and_select_by_val_names_the_setting():
    runs = [lr_sweep_summary(lr, seed, val) for lr, seed, val in
            ((0.05, 1, 0.910), (0.05, 2, 0.912), (0.1, 1, 0.921), (0.1, 2, 0.925), (0.2, 1, 0.900))]
    rows = [cells(line) for line in render_tables(runs).splitlines()[1:6]]
    assert rows[0][:5] == ["Depth", "Width", "# Params", "lr", "val/acc"]
    assert [row[3] for row in rows[2:]] == ["0.05", "0.1", "0.2"]  # one row per lr, not one average
    assert [row[4].split(" [")[0] for row in rows[2:]] == ["0.911 ± 0.001", "0.923 ± 0.003", "0.900"]
    assert rows[2][4].endswith("]†")  # two runs: an interval that says little
    assert [row[-1] for row in rows[2:]] == ["n=2", "n=2", ""]
    chosen = render_tables(runs, select_by="val").splitlines()
    assert len(chosen) == 4 + 3  # one row, then the notes on the interval and on n = 2
    assert cells(chosen[3])[:4] == ["20", "1", "0.27 M", "0.1"]
    assert cells(chosen[3])[-1] == "n=2, best val/acc of 3 settings"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|")[1:]]


def test_table_cli_errors_without_runs(tmp_path, cli):
    proc = cli("table", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: no finished runs (summary.json) below {tmp_path}"


DIVERGED_BEFORE_EVALUATING = """\
### CIFAR10_x32
| Depth | Width | # Params |                                           val/acc |                                           tst/acc |                                           tst/nll | misc
|    -: |    -: |       -: |                                               :-: |                                               :-: |                                               :-: | :-
|    20 |     1 |   0.27 M | 0.923 ± 0.003 [0.898, 0.948]† (ref 0.923, +0.000) | 0.920 ± 0.008 [0.844, 0.996]† (ref 0.924, −0.004) | 0.300 ± 0.000 [0.300, 0.300]† (ref 0.278, +0.022) | n=3, 1 diverged
|    18 |     1 |  11.17 M |                                   n/a (ref 0.952) |                                   n/a (ref 0.948) |                                   n/a (ref 0.199) | fp32 (0.0 hrs; ref 0.6 hrs), 1 diverged

mean ± sample std [95% Student-t interval of the mean, clipped to what the figure can be: [0, 1] for an accuracy, ≥ 0 for an NLL] over the n runs (seeds) of a row; one run: its figure.
† n = 2: the interval of 2 runs spans ±12.7 standard errors (Student's t, 1 degree of freedom) and says little; 3 runs or more narrow it."""


def diverged_summary(s: dict) -> dict:
    """The summary.json of a run that diverged before its first evaluation: no figures at all."""
    return dict(s, status="diverged", best_val_acc=None, tst_acc=None, tst_nll=None)


def test_table_leaves_out_the_figures_of_runs_that_diverged_before_evaluating():
    summaries = [summary("CIFAR10_x32", 20, 1, "fp32", 272_464, val, tst, 0.3, seed=seed)
                 for seed, val, tst in ((1, 0.921, 0.914), (3, 0.925, 0.926))]
    summaries.append(diverged_summary(summary("CIFAR10_x32", 20, 1, "fp32", 272_464, 0, 0, 0, seed=2)))
    summaries.append(diverged_summary(summary("CIFAR10_x32", 18, 1, "fp32", 11_173_952, 0, 0, 0, wall_seconds=36)))
    assert render_tables(summaries, compare=True) == DIVERGED_BEFORE_EVALUATING


DAMAGED_SUMMARIES = {"not_json": "{bad", "empty": "", "a_list": "[1]", "no_fields": "{}",
                     "text_figure": json.dumps(dict(summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5),
                                                    best_val_acc="high"))}


def test_table_skips_damaged_summaries_with_one_warning_each(tmp_path, cli):
    write_runs(tmp_path, [summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5)])
    for name, text in DAMAGED_SUMMARIES.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    proc = cli("table", tmp_path, check=True)
    assert proc.stdout.splitlines()[-1] == "|     8 |     1 |   0.08 M |   0.500 |   0.400 |   1.500 |"
    warnings = proc.stderr.splitlines()
    assert len(warnings) == len(DAMAGED_SUMMARIES) and "Traceback" not in proc.stderr
    for name, warning in zip(sorted(DAMAGED_SUMMARIES), warnings):
        assert warning.startswith(f"warning: skipping damaged run folder {tmp_path / name}: summary.json ")


# ---------------------------------------------------------------- calibration by hand

def random_predictions(n: int = 600, classes: int = 7, sharpness: float = 3.0):
    """Overconfident logits: right about half the time, with large margins."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) * sharpness
    logits[torch.arange(n), labels] += 2.0
    return logits, labels


def numpy_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def numpy_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return -np.log(numpy_probs(logits, temperature)[np.arange(len(labels)), labels]).mean()


def numpy_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL, 15-bin ECE and Brier score written out loop by loop."""
    probs = numpy_probs(logits)
    conf, pred = probs.max(1), probs.argmax(1)
    ece = 0.0
    for b in range(15):
        in_bin = (conf > b / 15) & (conf <= (b + 1) / 15)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
    onehot = np.eye(logits.shape[1])[labels]
    return {"acc": (pred == labels).mean(), "nll": numpy_nll(logits, labels),
            "ece": ece, "brier": ((probs - onehot) ** 2).sum(1).mean()}


def test_calibration_metrics_match_numpy():
    logits, labels = random_predictions()
    ours = calibration_metrics(logits, labels)
    expected = numpy_metrics(logits.double().numpy(), labels.numpy())
    assert ours == pytest.approx(expected, abs=1e-9)
    assert 0.1 < ours["ece"] < 0.9  # really miscalibrated, so the comparison means something


def test_ece_and_brier_of_perfect_predictions_are_zero():
    labels = torch.tensor([0, 1, 2, 1])
    probs = torch.nn.functional.one_hot(labels, 3).double()
    assert expected_calibration_error(probs, labels) == 0.0
    assert brier_score(probs, labels) == 0.0


def test_fit_temperature_minimises_nll():
    logits, labels = random_predictions()
    t = fit_temperature(logits, labels)
    np_logits, np_labels = logits.double().numpy(), labels.numpy()
    grid = np.linspace(0.2, 10, 2000)
    best = grid[np.argmin([numpy_nll(np_logits, np_labels, g) for g in grid])]
    assert t > 1.5  # overconfident logits are softened
    assert t == pytest.approx(best, abs=0.01)
    assert nll(logits, labels, t) == pytest.approx(numpy_nll(np_logits, np_labels, t), abs=1e-12)
    assert nll(logits, labels, t) < nll(logits, labels)


# ---------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_pngs(paths: list[Path]) -> None:
    from PIL import Image

    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200


def write_hand_run(run: Path, s: dict, n_evals: int = 4) -> None:
    """A run folder as the trainer leaves it: config.json, metrics.jsonl and (if finished) summary.json."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data_name": s["data_name"], "resnet_depth": s["depth"]}))
    records = [{"iter": 100 * (i + 1), "trn_loss": 2.0 / (i + 1), "val_acc": 0.2 * i} for i in range(n_evals)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps(s))


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


def test_read_metrics_drops_a_truncated_last_line_only(tmp_path):
    from resbench.runs.reader import read_metrics
    from resbench.runs.schema import RunFolderError as DamagedRun

    run = tmp_path / "run"
    write_hand_run(run, summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5), n_evals=3)
    whole = read_metrics(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iter": 400, "trn_l')  # a crash in the middle of an append
    assert read_metrics(run) == whole and len(whole) == 3
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], lines[-1], *lines[1:-1]]) + "\n")
    with pytest.raises(DamagedRun, match="metrics.jsonl line 2 is not JSON"):
        read_metrics(run)


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


def hostile_run_folders(runs: Path) -> dict[str, str]:
    """Run folders whose files a hostile user crafted, each with the warning that must skip it."""
    s = summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5)
    faults = {}
    for name, line, fault in (("nan_iter", '{"iter": NaN, "val_acc": 0.5, "trn_loss": 1.0}',
                               "metrics.jsonl line 5 has iteration nan, not a whole number of iterations"),
                              ("repeated", '{"iter": 400, "val_acc": 0.5, "trn_loss": 1.0}',
                               "metrics.jsonl line 5 has iteration 400 after 400; the evaluations must go forward")):
        write_hand_run(runs / name, s)
        with open(runs / name / "metrics.jsonl", "a") as f:
            f.write(line + "\n" + '{"iter": 900, "val_acc": 0.5, "trn_loss": 1.0}\n')
        faults[name] = fault
    for name, file in (("zero", "metrics.jsonl"), ("fifo", "config.json")):
        write_hand_run(runs / name, s)
        (runs / name / file).unlink()
        (runs / name / file).symlink_to("/dev/zero") if name == "zero" else os.mkfifo(runs / name / file)
        faults[name] = f"{file} is unreadable (it is not a regular file (a device, FIFO or socket))"
    write_hand_run(runs / "huge", s)
    with open(runs / "huge" / "metrics.jsonl", "r+b") as f:
        f.truncate(65 << 20)  # sparse: nothing written
    faults["huge"] = "metrics.jsonl is unreadable (it is larger than 67,108,864 bytes, more than resbench reads)"
    write_hand_run(runs / "deep", s)
    (runs / "deep" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    faults["deep"] = "config.json is unreadable (nested too deeply)"
    return faults


def test_compare_skips_hostile_run_files_with_one_warning_each_and_reads_none_unbounded(tmp_path, capsys):
    from resbench.cli.main import main

    runs = tmp_path / "runs"
    write_hand_run(runs / "ok", summary("CIFAR10_x32", 20, 1, "fp32", 272_474, 0.9, 0.9, 0.3))
    faults = hostile_run_folders(runs)
    assert main(["compare", str(runs), "--brief"]) == 0
    out, err = capsys.readouterr()
    assert "CIFAR10_x32" in out
    assert sorted(err.splitlines()) == sorted(f"warning: skipping damaged run folder {runs / name}: {fault}"
                                              for name, fault in faults.items())


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


# ---------------------------------------------------------------- sweep planning


def test_sweep_reports_a_diverged_run_and_table_and_plot_mark_it(tmp_path, cli):
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("seed = [1, 2]", "seed = [1]"))
    runs = tmp_path / "runs"
    proc = cli("sweep", "--grid", grid, "--runs_dir", runs, "--", "--optim_lr", "1e30")
    assert proc.returncode == 1
    run = runs / "Digits_x32" / "R8x1-b32-i10-lr1e+30-wd0.001-s1"
    assert f"failed: {run} (exit status 1)" in proc.stdout
    assert "the training loss became nan" in (run / "stdout.log").read_text()
    assert json.loads((run / "summary.json").read_text())["best_val_acc"] is None  # diverged before evaluating
    table = cli("table", runs, check=True).stdout.splitlines()
    assert table[-1].endswith("|     n/a |     n/a |     n/a | 1 diverged")
    cli("plot", runs, "--out", tmp_path / "figs", check=True)
    assert_pngs(list((tmp_path / "figs").iterdir()))


# ---------------------------------------------------------------- real runs: sweep, table, plot, eval

@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory) -> Path:
    """Two short real Digits_x32 runs (seeds 1 and 2) trained by a `--jobs 2` sweep."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "grid.toml").write_text(DIGITS_GRID)
    from resbench.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["sweep", "--grid", str(root / "grid.toml"), "--runs_dir", str(root / "runs"), "--jobs", "2"]) == 0
    assert "sweep: 2 of 2 runs finished" in out.getvalue()
    return root / "runs"


def test_table_and_plot_of_real_runs(digits_runs, tmp_path, cli):
    summaries = [json.loads(p.read_text()) for p in sorted(digits_runs.rglob("summary.json"))]
    acc = [s["tst_acc"] for s in summaries]
    table = cli("table", digits_runs, check=True).stdout.splitlines()
    assert table[0] == "### Digits_x32"
    assert table[3].startswith(f"|     8 |     1 |   {summaries[0]['params'] / 1e6:.2f} M | ")
    assert f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}" in table[3] and table[3].endswith("| n=2")
    cli("plot", digits_runs, "--out", tmp_path, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Digits_x32_curves.png"]
    assert_pngs(list(tmp_path.iterdir()))


def test_eval_matches_a_computation_by_hand(digits_runs, cli):
    from resbench.data.prepared import load_splits
    from resbench.evaluate.metrics import predict_logits
    from resbench.models.resnet import resnet

    run = digits_runs / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s1"
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads(cli("eval", "--ckpt", run / "best.pt", "--json", "--temperature_scaling",
                            check=True).stdout)
    model = resnet(8, 1, num_classes=10, image_size=32)
    model.load_state_dict(torch.load(run / "best.pt", weights_only=True))
    splits = load_splits("Digits_x32", "unused")
    by_hand = numpy_metrics(predict_logits(model, splits.test_images).double().numpy(), splits.test_labels.numpy())
    assert {k: report[k] for k in by_hand} == pytest.approx(by_hand, abs=1e-5)
    assert report["acc"] == pytest.approx(summary["tst_acc"], abs=1e-6)
    assert report["nll"] == pytest.approx(summary["tst_nll"], abs=1e-4)
    scaled = report["temperature_scaling"]
    assert scaled["temperature"] > 0 and scaled["val_nll_after"] < scaled["val_nll_before"]
    val = json.loads(cli("eval", "--ckpt", run / "best.pt", "--split", "val", "--json", check=True).stdout)
    assert val["acc"] == pytest.approx(summary["best_val_acc"], abs=1e-6)


BAD_RUN_CONFIGS = {  # config.json beside the checkpoint: what the error says after its path
    "{bad": " is unreadable (Expecting property name",
    "[1]": " is not a JSON object",
    '{"data_name": "Nope", "resnet_depth": 8, "resnet_width": 1}': ": unknown data_name 'Nope'",
    '{"data_name": "Digits_x32", "resnet_width": 1}': " lacks a valid resnet_depth",
    '{"data_name": "Digits_x32", "resnet_depth": "8", "resnet_width": 1}': " lacks a valid resnet_depth",
    '{"data_name": "Digits_x32", "resnet_depth": 9, "resnet_width": 1}': ": unsupported resnet depth 9",
    '{"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1}': " names no data_root; pass --data_root",
}


@pytest.mark.parametrize("text", BAD_RUN_CONFIGS)
def test_eval_with_a_damaged_config_is_one_clear_line(tmp_path, capsys, text):
    from resbench.cli.main import main

    (tmp_path / "config.json").write_text(text)
    (tmp_path / "best.pt").write_bytes(b"")
    assert main(["eval", "--ckpt", str(tmp_path / "best.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'config.json'}{BAD_RUN_CONFIGS[text]}") and err.count("\n") == 1


def test_eval_of_a_foreign_or_corrupt_checkpoint_is_one_clear_line(tmp_path, cli):
    import torch

    (tmp_path / "config.json").write_text(json.dumps(
        {"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1, "data_root": "unused"}))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "best.pt")
    proc = cli("eval", "--ckpt", tmp_path / "best.pt")
    assert proc.returncode == 2 and "holds no ResNet of resbench (keys fc.weight, ...), but" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    proc = cli("eval", "--ckpt", tmp_path / "best.pt")
    assert proc.returncode == 2 and "is corrupted or not a checkpoint" in proc.stderr


# ---------------------------------------------------------------- hostile run folders and working folders (issue 14)

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


def test_names_in_a_table_cannot_act_on_the_terminal(tmp_path, capsys):
    from resbench.cli.main import main

    write_runs(tmp_path, [summary("Digits\x1b[2J_x32", 8, 1, "fp32\x07", 78_000, 0.5, 0.4, 1.5)])
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### Digits\\x1b[2J_x32" in out and "fp32\\x07" in out and "\x1b" not in out and "\x07" not in out


def test_sweep_trains_the_grid_and_skips_it_the_second_time(digits_runs, cli):
    runs = sorted((digits_runs / "Digits_x32").iterdir())
    assert [r.name for r in runs] == ["R8x1-b32-i10-lr0.1-wd0.001-s1", "R8x1-b32-i10-lr0.1-wd0.001-s2"]
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        assert (run / "stdout.log").stat().st_size > 0
    proc = cli("sweep", "--grid", digits_runs.parent / "grid.toml", "--runs_dir", digits_runs, check=True)
    assert {state for state, _ in plan_lines(proc.stdout)} == {"skip"}
