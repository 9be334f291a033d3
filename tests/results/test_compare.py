"""Comparing runs with the reference's own training logs, selection modes, seeds (issue 13), and what
the run files say (issue 16, item 6)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_runs import write_reference_run
from resbench.results.compare import as_json, match_runs, render_markdown
from resbench.results.noise import noise_model
from resbench.results.reference import (
    REFERENCE_SETTINGS,
    find_reference_run,
    imagenet_rows,
    reference_rows,
    reference_runs,
    seed_runs,
)
from resbench.results.stats import spread, t_quantile
from resbench.results.table import selected_figures
from resbench.runs.reader import find_run_folders as find_trained_runs
from resbench.settings.config import TrainConfig

C10_R20 = ("CIFAR10_x32", 20, 1, 0.001, "fp32")


def reference(key=C10_R20):
    return reference_runs()[key]


def compared(*paths: Path):
    cells, unmatched = match_runs(find_trained_runs(list(paths)))
    return cells, unmatched


# ---------------------------------------------------------------- the shipped logs

def test_the_shipped_logs_hold_the_104_reference_runs_and_agree_with_the_published_table():
    runs = seed_runs()
    assert len(runs) == 104 and all(len(run.records) == 48 for run in runs.values())
    assert sorted({key[3] for key in runs}) == [0.0001, 0.0003, 0.001, 0.003]
    assert [r["iter"] for r in reference().records] == list(range(1000, 48001, 1000))
    first = reference().records[0]
    assert (first["w_norm"], first["trn_lr"], first["tst_acc"]) == (43.47, 0.01041, 0.3842)
    assert reference().records[-1]["tst_acc"] is None  # logged only where validation improved
    for row in reference_rows():
        best = runs[(row.data_name, row.depth, row.width, 0.001, row.precision)].best()
        logged = (best["val_acc"], best["tst_acc"], best["tst_nll"])
        if (row.data_name, row.depth) == ("CIFAR10_x32", 56):
            # The published R56 row is the log's iteration 45,000, not its best (48,000): see docs/results.md.
            at = runs[(row.data_name, 56, 1, 0.001, "fp32")].at(45000)
            logged = (at["val_acc"], at["tst_acc"], at["tst_nll"])
        assert logged == pytest.approx((row.val_acc, row.tst_acc, row.tst_nll), abs=0.00051), row


IMAGENET_R18 = ("ImageNet1k_x32", 18, 1, 0.0001, "fp16")


def test_the_shipped_imagenet_logs_hold_its_7_runs_and_agree_with_its_published_rows():
    """imagenet-x.md: six published rows (the README's val/acc; tst/nll and wall time from the logs) and a seventh
    log (R50 at wd 3e-4); 34.2 hours of wall time on 2-4 GPUs, 113 GPU-hours."""
    runs = {key: run for key, run in reference_runs().items() if key not in seed_runs()}
    assert len(runs) == 7 and all([r["iter"] for r in run.records] == list(range(1000, 128001, 1000))
                                  for run in runs.values())
    for row in imagenet_rows():
        run = runs[(row.data_name, row.depth, row.width, row.weight_decay, row.precision)]
        best = run.best()
        assert (best["val_acc"], best["tst_acc"], best["tst_nll"]) == pytest.approx(
            (row.val_acc, row.tst_acc, row.tst_nll), abs=0.00051), row
        assert run.records[-1]["elapsed_s"] / 60 == pytest.approx(row.wall_min, abs=0.05)
        assert (run.batch_size, run.optim_ni, run.optim_lr, run.devices) == (1024, 128_000, 0.4, row.devices)
        assert row.devices == (2 if row.data_name == "ImageNet1k_x32" else 4)
    assert sum(row.wall_min for row in imagenet_rows()) / 60 == pytest.approx(34.2, abs=0.05)
    assert sum(row.wall_min * row.devices for row in imagenet_rows()) / 60 == pytest.approx(113, abs=0.5)
    assert sum(math.isinf(r["g_norm"]) or math.isnan(r["g_norm"]) for r in runs[IMAGENET_R18].records) > 90


def test_an_imagenet_run_of_the_references_own_figures_is_consistent_and_says_its_noise_is_borrowed(tmp_path, cli):
    """Its windows are the 128k schedule's, its nan/inf g_norm windows are no divergence, and every verdict says
    that the noise model is the CIFAR/TinyImageNet runs' (one fp16 log per ImageNet cell calibrates nothing)."""
    write_reference_run(tmp_path / "run", reference(IMAGENET_R18))
    [cell] = json.loads(cli("compare", tmp_path / "run", "--json", check=True).stdout)["cells"]
    assert cell["verdict"]["status"] == "consistent" and cell["verdict"]["calibrated"] is False
    assert [t["window"] for t in cell["tests"] if t["metric"] == "val_acc"] == [
        [1000, 10000], [11000, 32000], [33000, 64000], [65000, 96000], [97000, 128000]]
    text = cli("compare", tmp_path / "run", "--brief", check=True).stdout
    assert "consistent with the reference (12 tests" in text and "not calibrated here" in text
    assert find_reference_run("ImageNet1k_x32", 18, 1, "fp16", {}) == (
        "other settings: batch_size 256 (the reference's: 1024); optim_ni 48000 (the reference's: 128000); "
        "optim_lr 0.1 (the reference's: 0.4)")
    assert find_reference_run("ImageNet1k_x32", 50, 1, "fp16", {"batch_size": 1024, "optim_ni": 128_000,
                                                               "optim_lr": 0.4}) == (
        "optim_weight_decay 0.001 (the reference's sweep: 0.0001, 0.0003)")


def test_the_reference_settings_are_the_trainers_defaults():
    """A config.json lacking a setting is matched as if it held the default: they must be the reference's."""
    defaults = vars(TrainConfig())
    assert {key: defaults[key] for key in REFERENCE_SETTINGS} == REFERENCE_SETTINGS
    assert defaults["optim_weight_decay"] == 0.001


# ---------------------------------------------------------------- compare

def test_a_run_built_from_the_references_own_figures_compares_as_identical(tmp_path, cli):
    write_reference_run(tmp_path / "run", reference())
    report = json.loads(cli("compare", tmp_path / "run", "--json", check=True).stdout)
    [cell] = report["cells"]
    assert cell["verdict"]["status"] == "consistent" and cell["verdict"]["failures"] == []
    assert cell["verdict"]["false_alarm_rate"] == 0.05 and cell["verdict"]["tests"] == len(cell["tests"]) == 12
    assert all(t["difference"] == 0 and t["decision"] == "pass" for t in cell["tests"] if t["window"])
    assert [t["statistic"] for t in cell["tests"]][:3] == ["val_acc 1k–4k", "trn_loss 1k–4k", "trn_w_norm 1k–4k"]
    assert [t["statistic"] for t in cell["tests"]][-2:] == ["tst_acc", "tst_nll"]
    # The final figures are judged against the published row, which `table --compare reference` prints.
    assert cell["finals"]["tst_acc"]["reference"] == 0.924 and report["no_reference_run"] == []
    assert cell["verdict"]["power"]["tst_acc"]["runs_needed_for_half_a_point"] is None
    text = cli("compare", tmp_path, check=True).stdout
    assert "| R20x1 wd 0.001 fp32 | 1 | 48000 | 0.9229 (ref 0.923, −0.0001) | 0.9238 (ref 0.924, −0.0002, p 0.96) |" in text
    assert ("consistent with the reference (12 tests, 5% false-alarm rate); would detect a tst/acc shortfall ≥ 0.013 "
            "(80% power, 1 run) or a tst/nll excess ≥ 0.03") in text
    assert "0.005 is below what any number of runs can detect (the reference is one run)" in text
    assert "\n| 1000 | 0.389 | 0.389 | 1.959 | 1.959 | 43.47 | 43.47\n" in text
    assert "| w_norm 1k–4k | 1 | +0.0% | ±1.50% | 1 | 0.0015 | pass" in text


def test_compare_says_so_under_a_set_that_validates_on_its_test_set(tmp_path, monkeypatch):
    from resbench.results import compare

    ref = dataclasses.replace(reference(), data_name="ImageNet1k_x32")
    write_reference_run(tmp_path / "run", ref)
    monkeypatch.setattr(compare, "find_reference_run", lambda *args: ref)
    cells, unmatched = compared(tmp_path)

    text = render_markdown(cells, unmatched)
    assert "\nval = test: ImageNet1k_x32 validates on its test set (the official validation set)" in text
    assert as_json(cells, unmatched)["cells"][0]["val_is_test"] is True
    monkeypatch.undo()
    cifar = compared(write_reference_run(tmp_path / "cifar", reference()))
    assert "val = test" not in render_markdown(*cifar) and as_json(*cifar)["cells"][0]["val_is_test"] is False


@pytest.mark.parametrize("shift, key, label", [
    ({"trn_w_norm": (13_000, 1.03)}, "trn_w_norm 13k–24k", "w_norm 13k–24k"),  # 3% against the margin of 1.5%
    ({"val_acc": (37_000, -0.02)}, "val_acc 37k–48k", "val/acc 37k–48k"),  # at lr ≈ 0 the tolerance is ±0.011
    ({"trn_loss": (5_000, 1.2)}, "trn_loss 5k–12k", "trn/loss 5k–12k"),
])
def test_a_shifted_curve_fails_the_verdict_in_the_window_it_shifts(tmp_path, shift, key, label):
    write_reference_run(tmp_path / "run", reference(), shift=shift)
    [cell], _ = compared(tmp_path)
    verdict = cell.verdict()
    assert verdict["status"] == "differs" and not verdict["consistent"]
    assert [f["statistic"] for f in verdict["failures"]] == [key]
    assert cell.verdict_text().startswith(f"DIFFERS from the reference: {label} ")


def test_an_early_weight_norm_mismatch_warns_while_the_run_is_going(tmp_path):
    write_reference_run(tmp_path / "run", reference(), until=4000, shift={"trn_w_norm": (1000, 0.95)})
    [cell], _ = compared(tmp_path)
    verdict = cell.verdict()
    assert (verdict["status"], verdict["finished"], verdict["reached"]) == ("early warning", False, 4000)
    assert verdict["failures"][0]["statistic"] == "trn_w_norm 1k–4k"
    assert cell.verdict_text().startswith("EARLY WARNING, w_norm is off: look at the initialisation")
    assert "w_norm 1k–4k −5.0% (p < 0.0001, tolerance ±1.5%, n = 1)" in cell.verdict_text()


def test_an_early_loss_mismatch_with_the_weight_norm_right_points_at_the_data(tmp_path):
    write_reference_run(tmp_path / "run", reference(), until=4000,
                        shift={"val_acc": (1000, -0.28), "trn_loss": (1000, 1.18)})  # as on random labels
    [cell], _ = compared(tmp_path)
    assert cell.verdict()["status"] == "early warning"
    assert cell.verdict_text().startswith("EARLY WARNING, w_norm matches but the fit does not: look at the data")


def test_a_run_still_going_is_judged_on_the_windows_it_completed(tmp_path):
    write_reference_run(tmp_path / "run", reference(("CIFAR100_x32", 18, 1, 0.001, "fp16")), until=5000)
    [cell], _ = compared(tmp_path)
    assert cell.verdict()["status"] == "consistent so far"
    assert [c.statistic.key for c in cell.tests] == ["val_acc 1k–4k", "trn_loss 1k–4k", "trn_w_norm 1k–4k"]
    theirs = reference(("CIFAR100_x32", 18, 1, 0.001, "fp16")).at(5000)["best_val_acc"]
    assert cell.finals["val_acc"]["reference"] == theirs and not cell.finals["val_acc"]["final"]  # their best so far
    assert cell.verdict_text() == ("consistent so far: 3 tests up to iteration 5000 of 48000; the final figures "
                                   "are judged at the end")


def test_a_run_younger_than_the_references_first_evaluation_is_set_beside_nothing(tmp_path, cli):
    """Stopped at iteration 40, a run was printed beside `ref 0.389 by iter 40`: the reference's evaluation at
    1,000 (issue 39). It has no figure of the reference's to stand beside yet, and says so."""
    run = write_reference_run(tmp_path / "run", reference(), until=0)
    (run / "metrics.jsonl").write_text(json.dumps({"iter": 40, "trn_loss": 2.2, "val_acc": 0.21, "val_nll": 2.1,
                                                   "tst_acc": 0.2, "tst_nll": 2.1}) + "\n")
    [cell], _ = compared(tmp_path)
    assert cell.finals["val_acc"]["reference"] is None and cell.finals["val_acc"]["at_iteration"] == 40
    assert reference().best(up_to=999) is None and reference().best(up_to=1000)["iter"] == 1000
    text = cli("compare", tmp_path, "--brief", check=True).stdout
    assert ("| R20x1 wd 0.001 fp32 | 1 | 40 | 0.2100 (no ref yet: its first evaluation is at iter 1000; judged at "
            "the end) | 0.2000 (no ref yet") in text and "by iter 40" not in text


def test_runs_at_different_stages_are_judged_each_with_the_runs_at_its_stage(tmp_path):
    """A finished run's best is never averaged with a run's best at iteration 5,000."""
    write_reference_run(tmp_path / "done", reference(), seed=1)
    write_reference_run(tmp_path / "going", reference(), seed=2, until=5000, shift={"val_acc": (1000, -0.2)})
    [cell], _ = compared(tmp_path)
    by_key = {c.statistic.key: c for c in cell.tests}
    assert by_key["val_acc 1k–4k"].n == 2 and by_key["val_acc 5k–12k"].n == 1 and by_key["tst_acc"].n == 1
    assert cell.finals["val_acc"] == {**cell.finals["val_acc"], "ours": 0.9229, "n": 1, "final": True}
    assert cell.verdict()["runs_finished"] == 1 and not cell.finished
    assert "each window is judged with the runs that completed it" in render_markdown(*compared(tmp_path))


def test_a_diverged_run_fails_its_cell_and_a_run_without_evaluations_waits(tmp_path):
    diverged = write_reference_run(tmp_path / "diverged", reference(), until=7000)
    (diverged / "summary.json").write_text(json.dumps({"status": "diverged"}))
    write_reference_run(tmp_path / "new", reference(("CIFAR10_x32", 32, 1, 0.001, "fp32")), until=0)
    cells, _ = compared(tmp_path)
    assert [cell.verdict()["status"] for cell in cells] == ["diverged", "no evaluation yet"]
    assert cells[0].verdict_text() == "DIFFERS: 1 of 1 runs diverged: diverged (after iteration 7000)"


def test_a_finished_run_whose_summary_cannot_be_read_says_so(tmp_path, cli):
    run = write_reference_run(tmp_path / "run", reference())
    (run / "summary.json").write_text("{torn")
    [cell], _ = compared(tmp_path)
    assert cell.verdict()["status"] == "consistent so far"  # it cannot be known to have finished
    proc = cli("compare", tmp_path, "--brief", check=True)
    assert proc.stderr.splitlines() == [f"warning: {run / 'summary.json'} cannot be read: the run counts as "
                                        "unfinished until it is restored"]


def test_runs_with_other_settings_have_no_reference_run(tmp_path, cli):
    write_reference_run(tmp_path / "b64", reference(), batch_size=64)
    write_reference_run(tmp_path / "wd", reference(), optim_weight_decay=0.002)
    write_reference_run(tmp_path / "clip", reference(), optim_global_clipping=1.0, optim_lr=0.2)
    digits = write_reference_run(tmp_path / "digits", reference(), batch_size=64)  # as the quick start's
    config = json.loads((digits / "config.json").read_text())
    (digits / "config.json").write_text(json.dumps({**config, "data_name": "Digits_x32"}))
    cells, unmatched = compared(tmp_path)
    assert cells == []
    assert {run.path.name: reason for run, reason in unmatched} == {
        "b64": "other settings: batch_size 64 (the reference's: 256)",
        "clip": "other settings: optim_lr 0.2 (the reference's: 0.1); optim_global_clipping 1 (the reference's: off)",
        "digits": "the reference has no Digits_x32 runs",
        "wd": "optim_weight_decay 0.002 (the reference's sweep: 0.0001, 0.0003, 0.001, 0.003)",
    }
    text = cli("compare", tmp_path, "--brief", check=True).stdout
    assert f"- {tmp_path / 'digits'}: no reference run: the reference has no Digits_x32 runs" in text
    assert find_reference_run("CIFAR10_x32", 110, 1, "fp32", {}) == "the reference has no R110x1 run on CIFAR10_x32"
    assert find_reference_run("CIFAR10_x32", 20, 1, "bf16", {}) == \
        "precision bf16 (the reference ran R20x1 on CIFAR10_x32 in fp32 only)"


def test_a_bf16_run_is_compared_with_the_references_mixed_precision_run():
    found = find_reference_run("TinyImageNet200_x64", 18, 1, "bf16", {"optim_weight_decay": 0.0003})
    assert found.key == ("TinyImageNet200_x64", 18, 1, 0.0003, "fp16")


def test_several_seeds_pool_their_spread_with_the_noise_model(tmp_path):
    offsets = (-0.004, 0.001, 0.006)
    for seed, offset in zip((1, 2, 3), offsets):
        write_reference_run(tmp_path / f"s{seed}", reference(), seed=seed, shift={"val_acc": (1000, offset)})
    [cell], _ = compared(tmp_path)
    assert len(cell.runs) == 3
    check = next(c for c in cell.tests if c.statistic.key == "val_acc 25k–36k")
    model = noise_model()["val_acc 25k–36k"]
    # By hand: σ² pools the model's 16 degrees of freedom with our 2; one more run (the reference's)
    # falls within t(1 − α/2, 18)·σ·√(1 + 1/3) of our mean.
    sigma = math.sqrt((16 * model.sigma ** 2 + 2 * statistics.variance(offsets)) / 18)
    assert check.df == 18 and check.sigma == pytest.approx(sigma)
    assert check.tolerance == pytest.approx(t_quantile(1 - model.alpha / 2, 18) * sigma * math.sqrt(4 / 3))
    assert check.difference == pytest.approx(statistics.fmean(offsets)) and check.decision == "pass"
    assert check.tolerance < check.one_run_tolerance
    assert cell.verdict()["status"] == "consistent" and cell.verdict()["power"]["tst_acc"]["runs"] == 3
    assert cell.finals["val_acc"]["std"] == pytest.approx(statistics.stdev(offsets), abs=1e-4)


# ---------------------------------------------------------------- statistics by hand

def test_student_t_quantiles_and_intervals_match_the_tables():
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (10_000, 1.960)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)
    s = spread([0.921, 0.923, 0.925])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.923), pytest.approx(0.002))
    assert (s.low, s.high) == (pytest.approx(0.923 - 0.0049683, abs=1e-6), pytest.approx(0.923 + 0.0049683, abs=1e-6))
    assert spread([0.5]).low is None


# ---------------------------------------------------------------- selection modes

HAND_RECORDS = [  # val peaks at 3000 (0.80, twice: the first counts), test at 4000; the last is 5000
    {"iter": 1000, "val_acc": 0.50, "trn_loss": 1.0, "tst_acc_at_eval": 0.48, "tst_nll_at_eval": 1.9,
     "tst_acc": 0.48, "tst_nll": 1.9},
    {"iter": 2000, "val_acc": 0.70, "trn_loss": 0.8, "tst_acc_at_eval": 0.69, "tst_nll_at_eval": 1.2,
     "tst_acc": 0.69, "tst_nll": 1.2},
    {"iter": 3000, "val_acc": 0.80, "trn_loss": 0.6, "tst_acc_at_eval": 0.78, "tst_nll_at_eval": 0.9,
     "tst_acc": 0.78, "tst_nll": 0.9},
    {"iter": 4000, "val_acc": 0.79, "trn_loss": 0.5, "tst_acc_at_eval": 0.83, "tst_nll_at_eval": 0.7},
    {"iter": 5000, "val_acc": 0.80, "trn_loss": 0.4, "tst_acc_at_eval": 0.81, "tst_nll_at_eval": 0.8},
]


def test_selection_modes_pick_the_right_evaluations():
    assert selected_figures(HAND_RECORDS, "val") == {"val_acc": 0.80, "tst_acc": 0.78, "tst_nll": 0.9, "iter": 3000}
    assert selected_figures(HAND_RECORDS, "last") == {"val_acc": 0.80, "tst_acc": 0.81, "tst_nll": 0.8, "iter": 5000}
    assert selected_figures(HAND_RECORDS, "test") == {"val_acc": 0.79, "tst_acc": 0.83, "tst_nll": 0.7, "iter": 4000}
    older = [{k: v for k, v in r.items() if not k.endswith("_at_eval")} for r in HAND_RECORDS]
    assert selected_figures(older, "val")["tst_acc"] == 0.78  # runs from before tst_*_at_eval
    assert selected_figures(older, "test")["tst_acc"] is None and selected_figures(older, "last")["tst_acc"] is None


def test_table_selection_all_shows_the_three_side_by_side(tmp_path, cli):
    run = tmp_path / "runs" / "Digits_x32" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HAND_RECORDS))
    (run / "summary.json").write_text(json.dumps({
        "status": "finished", "data_name": "Digits_x32", "depth": 8, "width": 1, "precision": "fp32",
        "params": 78_032, "val_acc": 0.80, "tst_acc": 0.78, "tst_nll": 0.9, "best_iter": 3000,  # an older summary
        "wall_seconds": 10.0, "config": {"seed": 1}}))
    lines = cli("table", tmp_path / "runs", "--selection", "all", check=True).stdout.splitlines()
    assert [cell.strip() for cell in lines[1].split("|")[1:]] == [
        "Depth", "Width", "# Params", "selection", "val/acc", "tst/acc", "tst/nll", "misc"]
    rows = [[cell.strip() for cell in line.split("|")[1:]] for line in lines[3:6]]
    assert [row[3:] for row in rows] == [["best val", "0.800", "0.780", "0.900", "iter 3000"],
                                         ["last", "0.800", "0.810", "0.800", "iter 5000"],
                                         ["best test", "0.790", "0.830", "0.700", "iter 4000"]]
    last = cli("table", tmp_path / "runs", "--selection", "last", check=True).stdout.splitlines()
    assert last[3].endswith("|   0.800 |   0.810 |   0.800 | iter 5000")


# ---------------------------------------------------------------- a real run: files, names, statistics

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    from resbench.train.loop import train

    folder = tmp_path_factory.mktemp("digits") / "run"
    train(TrainConfig(data_name="Digits_x32", resnet_depth=8, batch_size=32, optim_ni=20, eval_every=10,
                      save=str(folder), device="cpu"))
    return folder


def test_a_run_records_the_references_definitions_and_test_figures_at_every_evaluation(digits_run):
    from resbench.settings.config import learning_rate

    records = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    cfg = TrainConfig(optim_ni=20)
    for record, first in zip(records, (0, 10)):
        lrs = [learning_rate(s, cfg) for s in range(first, first + 10)]
        assert record["trn_lr"] == pytest.approx(statistics.fmean(lrs))
        assert record["trn_lr_at_eval"] == learning_rate(first + 9, cfg)
        assert {"tst_acc_at_eval", "tst_nll_at_eval", "trn_w_norm", "trn_g_norm", "trn_w_norm_at_eval"} <= set(record)
        assert "w_norm" not in record and "g_norm" not in record
    improved = [r for r in records if "tst_acc" in r]
    assert all(r["tst_acc"] == r["tst_acc_at_eval"] for r in improved)
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["best_val_acc"] == max(r["val_acc"] for r in records) and "val_acc" not in summary


def test_step_stats_are_the_means_of_the_norms_the_optimiser_sees():
    from resbench.models.resnet import resnet
    from resbench.train.lossscale import ConstantLossScale
    from resbench.train.resume import RunState
    from resbench.train.step import StepStats, train_step

    torch.manual_seed(0)
    model = resnet(8, num_classes=3)
    cfg = TrainConfig(optim_weight_decay=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)
    scaler = ConstantLossScale("cpu", enabled=False)
    stats = StepStats(RunState(), torch.device("cpu"))
    w_norms, g_norms, lrs = [], [], [0.05, 0.1, 0.02]
    for lr in lrs:
        x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 3, (8,))
        probe = [p.detach().clone() for p in model.parameters()]
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad + 0.01 * p.detach() for p in model.parameters()]
        w_norms.append(torch.sqrt(sum((p.double() ** 2).sum() for p in probe)).item())
        g_norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item())
        train_step(model, optimizer, scaler, x, y, lr, cfg, torch.autocast("cpu", enabled=False), stats=stats)
    means = stats.means()
    # The sums hold numbers, not an autograd graph: one that grew by a copy of g + wd·p every step
    # (issue 23's helper found 24 GB after 400 steps of depth 20) until the run died of it.
    assert not stats.sums.requires_grad and stats.sums.grad_fn is None
    assert means["trn_lr"] == pytest.approx(statistics.fmean(lrs))
    assert means["trn_w_norm"] == pytest.approx(statistics.fmean(w_norms), rel=1e-5)
    assert means["trn_g_norm"] == pytest.approx(statistics.fmean(g_norms), rel=1e-4)
    snapshot = stats.snapshot()
    again = StepStats(RunState(step_stats=snapshot), torch.device("cpu"))  # as a resumed run restores them
    assert again.means() == means
    stats.reset()
    assert stats.means() == {"trn_lr": 0.0, "trn_w_norm": 0.0, "trn_g_norm": None}


def test_log_json_and_tensorboard_name_a_figure_alike():
    from resbench.runs.folder import log_label, tensorboard_tag

    assert [log_label(k) for k in ("trn_loss", "trn_w_norm", "val_acc", "tst_acc_at_eval", "best_val_acc")] == \
        ["trn/loss", "trn/w_norm", "val/acc", "tst/acc_at_eval", "val/best_acc"]
    assert [tensorboard_tag(k) for k in ("trn_loss", "val_nll", "tst_top5", "best_val_acc", "elapsed_s")] == \
        ["train/loss", "val/nll", "test/top5", "val/best_acc", "time/elapsed_s"]


def test_run_files_say_what_they_mean(digits_run):
    config = json.loads((digits_run / "config.json").read_text())
    assert config["save"] == str(digits_run) and config["device"] == "cpu" and config["compile"] == "auto"
    assert config["resolved"] == {"save": str(digits_run.resolve()), "data_root": str(Path("./data").resolve()),
                                  "device": "cpu", "precision": "fp32", "compile": False,
                                  "splits": {"train": 1280, "val": 217, "test": 300}}
    log = (digits_run / "log.txt").read_text()
    assert "None" not in log
    assert f"--data_root {Path('./data').resolve()}  # asked: ./data" in log
    assert "--compile false  # asked: auto" in log and "--optim_global_clipping off" in log
    records = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    line = next(line for line in log.splitlines() if line.startswith("[iter     20]"))
    for key, label in (("trn_loss", "trn/loss"), ("trn_w_norm", "trn/w_norm"), ("val_acc", "val/acc"),
                       ("best_val_acc", "val/best_acc")):
        assert f"{label} {records[-1][key]:.3f}" in line
    assert not (digits_run / ".lock").exists()


def test_resume_reads_a_config_with_resolved_values(digits_run, cli):
    again = cli("train", "--resume", digits_run, check=True)
    assert "not retraining" in again.stderr


def test_a_hundred_class_run_reports_top5_beside_top1(tmp_path):
    from resbench.train.loop import train

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "CIFAR100_x32"
    folder.mkdir(parents=True)
    for split, n in (("train", 40_960 + 64), ("test", 128)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 100, n))
    summary = train(TrainConfig(data_name="CIFAR100_x32", resnet_depth=8, batch_size=32, optim_ni=2, eval_every=1,
                                data_root=str(tmp_path / "data"), save=str(tmp_path / "run"), device="cpu",
                                allow_nonstandard=True))  # 64 validation and 128 test images
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_acc"] <= r["val_top5"] <= 1 and r["tst_acc_at_eval"] <= r["tst_top5_at_eval"] for r in records)
    assert summary["val_top5"] >= summary["best_val_acc"] and summary["tst_top5"] >= summary["tst_acc"]
    assert "val/top5" in (tmp_path / "run" / "log.txt").read_text()


def test_top5_counts_a_label_among_the_five_largest_logits():
    from resbench.evaluate.metrics import evaluate

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[: len(x)]

    images = torch.zeros(3, 32, 32, 3, dtype=torch.uint8)
    figures = evaluate(Fixed(), images, torch.tensor([4, 0, 0]), top5=True)
    assert figures["acc"] == pytest.approx(1 / 3) and figures["top5"] == pytest.approx(2 / 3)
    assert "top5" not in evaluate(Fixed(), images, torch.tensor([4, 0, 0]))


# ---------------------------------------------------------------- sweep: seeds and the weight-decay grid


# ---------------------------------------------------------------- plots

def test_plot_compare_reference_overlays_our_curves_on_theirs(tmp_path, cli):
    from PIL import Image

    for seed in (1, 2):
        write_reference_run(tmp_path / "runs" / f"s{seed}", reference(), seed=seed,
                            shift={"val_acc": (1000, 0.002 * seed)})
    write_reference_run(tmp_path / "runs" / "going", reference(("CIFAR10_x32", 18, 1, 0.001, "fp32")), until=9000)
    proc = cli("plot", tmp_path / "runs", "--compare", "reference", "--out", tmp_path / "figs", check=True)
    names = sorted(Path(line).name for line in proc.stdout.split())
    assert names == ["CIFAR10_x32_curves.png", "CIFAR10_x32_curves_vs_reference.png", "CIFAR10_x32_vs_reference.png"]
    with Image.open(tmp_path / "figs" / "CIFAR10_x32_curves_vs_reference.png") as image:
        image.verify()
        assert image.size[1] > 2 * 250  # one row of panels per cell: two cells
