"""The run folder's format, tested against its schema (runs/schema.py) rather than through each
command that reads it (that its names are spelled in runs/ only: tests/test_layout.py)."""

import json
import os
from pathlib import Path

import pytest
import torch

from resbench.runs import schema
from resbench.runs.folder import RunFolder
from resbench.runs.reader import find_run_folders, find_runs, last_iteration, read_metrics, read_summary, status_of
from resbench.runs.schema import RunFolderError
from resbench.settings.config import TrainConfig

# ---------------------------------------------------------------- written, then read back

SUMMARY = {"status": "finished", "data_name": "Digits_x32", "depth": 8, "width": 1, "precision": "fp32",
           "params": 77_850, "wall_seconds": 1.5, "best_val_acc": 0.9, "tst_acc": 0.85, "tst_nll": 0.4,
           "best_iter": 20, "config": {"data_name": "Digits_x32", "resnet_depth": 8, "seed": 1}}


def written_run(folder: Path, records: int = 2) -> RunFolder:
    cfg = TrainConfig(data_name="Digits_x32", resnet_depth=8, seed=1, save=str(folder))
    run = RunFolder(folder)
    with run.claimed():
        run.start(cfg, 77_850, torch.device("cpu"), "fp32", {"device": "cpu", "precision": "fp32"})
        for i in range(1, records + 1):
            run.append_metrics({"iter": 10 * i, "val_acc": 0.5 + i / 10, "trn_loss": 1.0 / i})
    return run


def test_what_the_writer_writes_the_reader_reads(tmp_path):
    run = written_run(tmp_path / "run")
    assert status_of(run.path) == "running" and last_iteration(run.path) == 20
    [read] = find_run_folders([tmp_path])
    assert (read.data_name, read.depth, read.precision, read.finished) == ("Digits_x32", 8, "fp32", False)
    assert [r["iter"] for r in read.records] == [10, 20]
    assert find_runs(tmp_path) == []  # not finished: no table row yet
    with run.claimed():
        run.finish(SUMMARY)
    [finished] = find_runs(tmp_path, with_records=True)
    assert (finished.summary["best_val_acc"], finished.status, len(finished.records)) == (0.9, "finished", 2)
    assert not (run.path / schema.LOCK).exists()


def test_a_folder_name_that_is_not_utf8_holds_its_run_and_its_log_names_it_in_its_bytes(tmp_path):
    """A --save name with bytes that are not UTF-8 (a name from another system, LANG=C)."""
    run = written_run(tmp_path / os.fsdecode(b"run\xff\xfe"))
    with run.claimed():
        run.log(f"in {run.path}")
    assert os.fsencode(run.path) + b"\n" in (run.path / schema.LOG).read_bytes()
    [read] = find_run_folders([tmp_path])
    assert read.path == run.path and [r["iter"] for r in read.records] == [10, 20]


def test_a_torn_last_metrics_line_is_dropped_and_a_torn_middle_one_named(tmp_path):
    run = written_run(tmp_path / "run")
    path = run.path / schema.METRICS
    path.write_text(path.read_text() + '{"iter": 30, "val_')
    assert [r["iter"] for r in read_metrics(run.path)] == [10, 20]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    with pytest.raises(RunFolderError, match=f"{schema.METRICS} line 2 is not JSON"):
        read_metrics(run.path)


def test_an_older_summary_name_reads_as_todays(tmp_path):
    older = {k: v for k, v in SUMMARY.items() if k != "best_val_acc"} | {"val_acc": 0.7}
    (tmp_path / schema.SUMMARY).write_text(json.dumps(older))
    assert read_summary(tmp_path)["best_val_acc"] == 0.7


@pytest.mark.parametrize("field", sorted(schema.SUMMARY_FIELDS))
def test_each_summary_field_is_checked_against_its_type(tmp_path, field):
    (tmp_path / schema.SUMMARY).write_text(json.dumps({**SUMMARY, field: True}))  # a JSON bool is no number
    with pytest.raises(RunFolderError, match=f"lacks a valid {field}"):
        read_summary(tmp_path)


def test_a_damaged_run_is_skipped_with_a_warning_and_the_others_read(tmp_path, capsys):
    written_run(tmp_path / "good")
    written_run(tmp_path / "bad")
    (tmp_path / "bad" / schema.CONFIG).write_text("[1]")
    assert [run.path.name for run in find_run_folders([tmp_path])] == ["good"]
    assert "skipping damaged run folder" in capsys.readouterr().err


@pytest.mark.parametrize("setting", [{"resnet_depth": None}, {"optim_weight_decay": None}, {"batch_size": "abc"}])
def test_a_setting_of_the_wrong_type_skips_that_run_with_one_line(tmp_path, capsys, setting):
    written_run(tmp_path / "good")
    written_run(tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / schema.CONFIG).read_text())
    (tmp_path / "bad" / schema.CONFIG).write_text(json.dumps({**config, **setting}))
    assert [run.path.name for run in find_run_folders([tmp_path])] == ["good"]
    [warning] = capsys.readouterr().err.splitlines()
    assert f"setting {next(iter(setting))} is" in warning and "skipping damaged run folder" in warning
