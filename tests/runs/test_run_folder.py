"""The run folder (runs/folder.py, reader.py, writes.py): its format, tested against its schema (runs/schema.py)
rather than through each command that reads it (that its names are spelled in runs/ only: tests/test_layout.py);
a run that never writes over another run's or the user's files, nor through a planted link; damaged and hostile
files read back, bounded."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from hand_runs import summary, write_hand_run

from conftest import tiny
from resbench import files
from resbench.cli.main import main
from resbench.runs import schema, writes
from resbench.runs.folder import RunFolder
from resbench.runs.reader import (
    find_run_folders,
    find_runs,
    last_iteration,
    read_metrics,
    read_summary,
    status_of,
)
from resbench.runs.schema import RunFolderError
from resbench.runs.schema import RunFolderError as CheckpointError
from resbench.settings.config import TrainConfig
from resbench.train.loop import train

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


# ---------------------------------------------------------------- never another run's or the user's files

def finished_run(folder: Path, **changes) -> TrainConfig:
    cfg = tiny(folder, **changes)
    train(cfg)
    return cfg


def folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_new_run_never_overwrites_another_run_without_last_pt(tmp_path):
    other = finished_run(tmp_path / "run")
    (tmp_path / "run" / "last.pt").unlink()
    (tmp_path / "run" / "summary.json").unlink()
    before = folder_state(tmp_path / "run")
    with pytest.raises(CheckpointError, match="holds a run with other settings.*resnet_depth: saved 8, now 14"):
        train(dataclasses.replace(other, resnet_depth=14))
    assert folder_state(tmp_path / "run") == before


def test_a_new_run_never_overwrites_the_users_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "log.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match="is not empty \\(log.txt\\) and holds no resbench run"):
        train(tiny(tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["log.txt"]  # not even a lock file left
    assert (tmp_path / "mine" / "log.txt").read_text() == "my notes"


def test_a_run_that_died_before_its_first_checkpoint_starts_over(tmp_path):
    cfg = finished_run(tmp_path / "run")
    for name in ("last.pt", "best.pt", "summary.json"):
        (tmp_path / "run" / name).unlink()
    assert train(cfg)["status"] == "finished"


def test_a_finished_run_with_other_settings_is_refused(tmp_path):
    cfg = finished_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="optim_ni: saved 6, now 12"):
        train(dataclasses.replace(cfg, optim_ni=12))
    assert train(cfg)["status"] == "finished"  # the same settings: reported, not retrained


def test_a_damaged_summary_is_a_clear_error(tmp_path):
    cfg = finished_run(tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text("{bad")
    with pytest.raises(CheckpointError, match="summary.json is unreadable.*delete it to resume the run from last.pt"):
        train(cfg)


def test_a_second_process_cannot_train_into_a_busy_folder(tmp_path, capsys):
    with RunFolder(tmp_path / "run").claimed():  # as another process holding the folder would
        code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--device", "cpu",
                     "--save", str(tmp_path / "run")])
    assert code == 2 and "error: another resbench process is training in" in capsys.readouterr().err


def test_a_run_failing_before_training_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "data" / "CIFAR10_x32"
    bad.mkdir(parents=True)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        (bad / f"{name}.npy").write_text("not an array")
    code = main(["train", "--data_name", "CIFAR10_x32", "--data_root", str(tmp_path / "data"), "--device", "cpu",
                 "--save", str(tmp_path / "deep" / "er" / "run")])
    assert code == 2 and "not a valid .npy file" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()  # nor the parent folders the run created


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError, match=r"\(Permission denied\); make that folder writable"):
        RunFolder(tmp_path).save_best({})
    monkeypatch.setattr(writes, "open_own_file", refuse)
    with pytest.raises(CheckpointError, match="Permission denied"):
        RunFolder(tmp_path).log("a line")


def test_a_save_folder_name_too_long_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--device", "cpu",
                 "--save", str(tmp_path / ("a" * 300) / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "(File name too long); use a shorter --save folder name" in err
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_in_a_run_folder_are_removed_by_the_next_run(unfinished_run):
    folder = Path(unfinished_run.save)
    stale = [folder / ".last.pt.k3j4h5g6.tmp", folder / ".metrics.jsonl.a1b2c3d4.tmp", folder / ".last.pt.sha256.x1y2z3w4.tmp"]
    kept = [folder / ".notes.txt.a1b2c3d4.tmp", folder / "mine.tmp"]
    with RunFolder(folder).claimed():  # a live run, writing its temporary files: a second run removes none
        for path in stale + kept:
            path.write_bytes(b"x" * 1000)
        with pytest.raises(CheckpointError, match="another resbench process is training"):
            RunFolder(folder).lock()
        assert all(path.exists() for path in stale)
    train(unfinished_run)  # the live run was killed: the next one removes its leftovers
    assert [path for path in stale if path.exists()] == [] and all(path.exists() for path in kept)


@pytest.mark.parametrize("name", [".lock", "log.txt"])
def test_a_symlink_planted_in_a_run_folder_is_not_followed(unfinished_run, name, capsys):
    folder = Path(unfinished_run.save)
    outside = folder.parent / "outside"
    (folder / name).unlink(missing_ok=True)  # the .lock is gone with the run that held it
    (folder / name).symlink_to(outside)
    code = main(["train", "--resume", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "(a symbolic link stands there; resbench never writes through one); remove it" in err, err
    assert not outside.exists()


def test_a_link_planted_at_the_default_run_folders_level_is_refused(tmp_path, cli):
    """Issue 37: below the folder a run's folder is named by (here the default runs/), every level is the run's
    own: a link planted as runs/<data_name> is one line naming it, and nothing is written where it leads."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "Digits_x32").symlink_to(outside)
    proc = cli("train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--optim_ni", "2", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == (
        "error: cannot write runs/Digits_x32 (a symbolic link stands there; resbench never writes through one); "
        "remove it, or use another --save folder\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to(outside)  # and <run>/tensorboard
    with pytest.raises(CheckpointError, match="tensorboard \\(a symbolic link stands there; resbench never writes"):
        RunFolder(tmp_path / "run").open_tensorboard(0)
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------- damaged and hostile files, read back

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
