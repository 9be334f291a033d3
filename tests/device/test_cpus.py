"""Threads and a busy machine (device/cpus.py): --threads is a setting a run may resume with changed, and a
busy machine is announced where it matters, with advice that fits the run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny
from resbench.device import cpus
from resbench.settings.config import RESUMABLE_CHANGES
from resbench.train.loop import train


@pytest.fixture
def keep_threads():
    """Training with --threads sets this process's thread count: put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_threads_is_a_train_setting_that_may_change_on_resume(tmp_path, keep_threads):
    cfg = tiny(tmp_path / "run", threads=1)
    train(cfg)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "(fp32, 1 thread)" in log and torch.get_num_threads() == 1
    assert "threads" in RESUMABLE_CHANGES
    (tmp_path / "run" / "summary.json").unlink()  # as if killed after its last checkpoint
    train(dataclasses.replace(cfg, threads=2))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "note: resuming with --threads 2 (was 1): the same recipe to float rounding" in log


def test_a_busy_machine_is_announced(monkeypatch):
    monkeypatch.setattr(cpus, "load_average", lambda: 9.5)
    assert "load average 9.5 on 2 cores" in cpus.busy_warning(cores=2)
    monkeypatch.setattr(cpus, "load_average", lambda: 1.5)
    assert cpus.busy_warning(cores=2) is None
    assert cpus.threads_per_job(4, cores=2) == 1 and cpus.threads_per_job(2, cores=16) == 8


def test_the_busy_warning_fits_the_run_and_stays_out_of_a_plan(tmp_path, monkeypatch, cli):
    """No `--threads 1` advice to a run that has one thread (issue 39); none for `sweep --dry_run`,
    which starts nothing, so the machine's load says nothing of its runs."""
    monkeypatch.setattr(cpus, "load_average", lambda: 9.5)
    assert "--threads 1" in cpus.busy_warning(cores=2) and "--threads 1" in cpus.busy_warning(cores=2, threads=2)
    assert cpus.busy_warning(cores=2, threads=1).endswith("This run already uses 1 thread: fewer processes at once "
                                                          "is what helps")
    (tmp_path / "grid.toml").write_text('data_name = ["Digits_x32"]\nresnet_depth = [8]\n')
    planned = cli("sweep", "--grid", tmp_path / "grid.toml", "--runs_dir", tmp_path, "--dry_run", check=True)
    assert "this machine is busy" not in planned.stdout + planned.stderr


def test_a_busy_machine_goes_into_the_run_log(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "load_average", lambda: 1000.0)
    train(tiny(tmp_path / "run"))
    assert "warning: this machine is busy (load average 1000.0" in (tmp_path / "run" / "log.txt").read_text()
