"""Signs of life without a terminal (train/progress.py): progress lines on a pipe, as under nohup or SLURM,
at the clock's pace, and the evaluations' lines timed."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import LIMIT, cli_env, tiny
from resbench import console
from resbench.train import progress
from resbench.train.loop import train


def test_redirected_output_gets_progress_lines_and_timed_evaluations(tmp_path):
    """stderr is a pipe here, as under nohup or SLURM: the first line comes after iteration 1."""
    proc = subprocess.run([sys.executable, "-m", "resbench", "train", "--data_name", "Digits_x32", "--resnet_depth",
                           "8", "--batch_size", "16", "--optim_ni", "8", "--eval_every", "4", "--device", "cpu",
                           "--save", str(tmp_path / "run")], env=cli_env(), capture_output=True, text=True,
                          timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr
    first = [line for line in proc.stderr.splitlines() if line.startswith("[iter ")][0]
    assert first.startswith("[iter      1/8] trn/loss ") and re.search(r"images/s, elapsed \d+:\d\d:\d\d, ETA ", first)
    start = next(line for line in proc.stdout.splitlines() if line.startswith("starting at iteration 0 of 8"))
    assert f"in {tmp_path / 'run'}:" in start and "eager step (--compile auto compiles runs of 1,000+" in start
    evaluations = [line for line in (tmp_path / "run" / "log.txt").read_text().splitlines()
                   if line.startswith("[iter ")]
    assert len(evaluations) == 2 and all(re.search(r", elapsed \d+:\d\d:\d\d, ETA ", line) for line in evaluations)
    assert evaluations[-1].endswith("ETA 0:00:00")


def test_progress_follows_the_clock_not_the_step_count(tmp_path, monkeypatch, capsys):
    """One line per LINE_EVERY_S: with an interval longer than the run only the first step is shown,
    with none every step."""
    shown = []
    real_show = progress.Progress.show
    monkeypatch.setattr(progress.Progress, "show", lambda self, *a: (shown.append(a[0]), real_show(self, *a)))
    monkeypatch.setattr(progress, "LINE_EVERY_S", 1e9)
    train(tiny(tmp_path / "slow", optim_ni=12, eval_every=6))
    assert shown == [1]
    shown.clear()
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    train(tiny(tmp_path / "fast", optim_ni=12, eval_every=6))
    assert shown == [s for s in range(1, 12) if s != 6]  # evaluation steps print their own line
    err = capsys.readouterr().err
    assert "[iter     11/12] trn/loss " in err and re.search(r"ETA \d+:\d\d:\d\d\n", err)


def test_clock_format():
    assert console.clock(3725.4) == "1:02:05" and console.clock(None) == "?" and console.clock(59.6) == "0:01:00"
