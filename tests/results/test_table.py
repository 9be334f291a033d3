"""`resbench table` (results/table.py): the seed's tables character for character, runs of other settings in
rows of their own, intervals of few runs, diverged, damaged and hostile summaries, and the table of two real runs."""

from __future__ import annotations

import json

import numpy as np
from hand_runs import (
    assert_pngs,
    diverged_summary,
    seed_summaries,
    seeds_and_compare_summaries,
    summary,
    write_runs,
)

from resbench.results.reference import imagenet_rows
from resbench.results.table import render_tables

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


def test_names_in_a_table_cannot_act_on_the_terminal(tmp_path, capsys):
    from resbench.cli.main import main

    write_runs(tmp_path, [summary("Digits\x1b[2J_x32", 8, 1, "fp32\x07", 78_000, 0.5, 0.4, 1.5)])
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### Digits\\x1b[2J_x32" in out and "fp32\\x07" in out and "\x1b" not in out and "\x07" not in out
