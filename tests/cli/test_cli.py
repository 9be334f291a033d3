"""A researcher's first hour (issue 16): threads, progress without a terminal, flags, config files,
fast help, sweep output, `data list`, bench warnings, and the shipped reference."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import LIMIT, REPO, cli_env, tiny
from resbench import console
from resbench.cli.main import main
from resbench.device import cpus
from resbench.settings.config import RESUMABLE_CHANGES
from resbench.train import progress
from resbench.train.loop import train


@pytest.fixture
def keep_threads():
    """Training with --threads sets this process's thread count: put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- 1. threads

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


# ---------------------------------------------------------------- 2. signs of life without a terminal

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


# ---------------------------------------------------------------- 3. flags


def test_train_has_the_mirror_its_errors_advise(tmp_path, cli):
    """A missing CIFAR-10, an unreachable official URL: the fix named works as a train flag."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    proc = cli("train", "--data_name", "CIFAR10_x32", "--data_root", tmp_path / "data", "--mirror", mirror,
               "--optim_ni", "1")
    assert proc.returncode == 2
    assert f"cifar-10-python.tar.gz not found in mirror folder {mirror}" in proc.stderr


# ---------------------------------------------------------------- 11. config files


# ---------------------------------------------------------------- 10. smaller points

HELP_COMMANDS = [[], ["train"], ["data"], ["data", "download"], ["data", "import"], ["data", "list"], ["eval"],
                 ["export"], ["sweep"], ["table"], ["compare"], ["plot"], ["bench"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "resbench")
def test_help_does_not_import_torch(command):
    code = ("import sys; from resbench.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    proc = subprocess.run([sys.executable, "-c", code, *command, "--help"], env=cli_env(), capture_output=True,
                          text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: resbench" in proc.stdout


def test_top_level_help_has_examples(cli):
    helped = cli("--help", check=True).stdout
    assert "examples:" in helped and "resbench train --data_name Digits_x32" in helped
    assert "giung2-dev" in helped and "--data-name" in helped


def test_data_list_names_the_demo_and_the_fix(tmp_path, cli):
    out = cli("data", "list", "--data_root", tmp_path, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    # train counts the training split, not the validation split the training file also holds (issue 39)
    assert lines["Digits_x32"].split()[1:5] == ["complete", "1280", "217", "300"] and "built in" in lines["Digits_x32"]
    assert f"`resbench data download CIFAR100_x32 --data_root {tmp_path}`" in lines["CIFAR100_x32"]


def test_bench_warns_when_its_windows_spread():
    from resbench.bench.measure import spread_warning

    steady = {"images_per_sec": 100.0, "images_per_sec_min": 95.0, "images_per_sec_max": 110.0}
    shaky = {**steady, "images_per_sec_min": 70.0}
    assert spread_warning(steady) is None
    assert "spread 40% (70.0 to 110.0 images/s), more than 20%" in spread_warning(shaky)


def test_bench_runs_with_threads_and_dashed_flags(cli, tmp_path):
    proc = cli("bench", "--device", "cpu", "--data-name", "Digits_x32", "--resnet-depth", "8", "--batch-size",
               "8", "--warmup", "0", "--iters", "1", "--windows", "1", "--threads", "1", "--compile", "false", "--json",
               check=True)
    assert json.loads(proc.stdout)["threads"] == 1


# ---------------------------------------------------------------- 7. what it reproduces

def test_the_reference_is_shipped_and_agrees_with_the_package():
    from resbench.results.reference import reference_rows
    from resbench.results.table import render_tables

    docs = REPO / "docs" / "reference"
    shipped = (docs / "seed-runs.tsv").read_text()
    assert shipped == (REPO / "src" / "resbench" / "results" / "reference_results.tsv").read_text()
    summaries = [{"data_name": r.data_name, "depth": r.depth, "width": r.width, "precision": r.precision,
                  "params": r.params, "val_acc": r.val_acc, "tst_acc": r.tst_acc, "tst_nll": r.tst_nll,
                  "wall_seconds": r.wall_min * 60, "config": None, "status": "finished"} for r in reference_rows()]
    tables = (docs / "seed-results.md").read_text().split("```\n\n", 1)[1].strip()
    assert render_tables(summaries) == tables
    readme = (REPO / "README.md").read_text()
    assert "https://github.com/cs-giung/giung2-dev/tree/main/projects/residual-networks" in readme
    assert "docs/reference/" in readme and (docs / "recipe.md").is_file()


def test_the_imagenet_reference_is_shipped_and_agrees_with_the_package():
    """docs/reference/imagenet-x.md's tables of the logs are the package's ImageNet rows (imagenet_results.tsv)."""
    from resbench.results.reference import imagenet_rows

    text = (REPO / "docs" / "reference" / "imagenet-x.md").read_text()
    assert "[imagenet-x.md](imagenet-x.md)" in (REPO / "docs" / "reference" / "README.md").read_text()
    logged = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("ImageNet1k") and cells[2] == "1e-4":
            logged[(cells[0], int(cells[1]))] = (cells[3].split()[0], cells[4], cells[5], int(cells[6]), cells[7])
    assert {key: value[1:] for key, value in logged.items()} == {
        (r.data_name, r.depth): (f"{r.tst_nll:.3f}", f"{r.wall_min / 60:.2f}", r.devices, f"{r.params:,}")
        for r in imagenet_rows()}
    for row in imagenet_rows():  # the README's val/acc, the log's to 4 decimals; tst/acc is the same figure here
        assert round(float(logged[(row.data_name, row.depth)][0]), 3) == row.val_acc == row.tst_acc


def test_the_readmes_python_imports_name_what_the_package_has():
    """The README's Python API is copied as written: each of its imports must resolve (and the model
    builder it shows must be the function, not its module)."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    imports = [line for block in blocks for line in block.splitlines() if line.startswith(("from resbench", "import resbench"))]
    assert imports
    namespace: dict = {}
    for line in imports:
        exec(line, namespace)
    assert callable(namespace["resnet"]) and callable(namespace["train"])


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    """`resbench sweep --grid wd --dry_run | head -1`: no traceback when the pipe closes. Eight seeds make the plan
    (about 225 kB) larger than a pipe's buffer (64 kB), so the sweep is still writing when the pipe closes."""
    proc = subprocess.Popen([sys.executable, "-m", "resbench", "sweep", "--grid", "wd", "--seeds", *"12345678",
                             "--dry_run", "--runs_dir", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    assert proc.stdout.readline().startswith(b"sweep: 832 runs")
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=LIMIT) == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_name_that_is_not_utf8_prints_escaped_on_a_strict_stdout(tmp_path, monkeypatch):
    """PYTHONIOENCODING=utf-8 (or a UTF-8 locale) makes stdout strict: a folder name that is not
    UTF-8 must not end the command with a UnicodeEncodeError."""
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", strict)
    assert main(["data", "list", "--data_root", str(tmp_path / os.fsdecode(b"data\xff"))]) == 0
    strict.flush()
    assert b"data\\udcff" in strict.buffer.getvalue()
