"""A researcher's first hour (issue 16): threads, progress without a terminal, flags, config files,
fast help, sweep output, `data list`, bench warnings, and the shipped reference."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LIMIT, REPO, cli_env, fails_if_blocked
from resbench.runtime import cpus, progress
from resbench.cli.main import build_parser, main
from resbench.settings.config import RESUMABLE_CHANGES, ConfigError, TrainConfig
from resbench.settings.flags import config_from_args, train_flag_parser
from resbench.train.loop import train


def tiny(folder: Path, **changes) -> TrainConfig:
    settings = dict(data_name="Digits_x32", resnet_depth=8, batch_size=16, optim_ni=6, eval_every=3,
                    device="cpu", save=str(folder))
    return TrainConfig(**{**settings, **changes})


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
    assert "(fp32, 1 threads)" in log and torch.get_num_threads() == 1
    assert "threads" in RESUMABLE_CHANGES
    (tmp_path / "run" / "summary.json").unlink()  # as if killed after its last checkpoint
    train(dataclasses.replace(cfg, threads=2))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "note: resuming with --threads 2 (was 1): the same recipe to float rounding" in log


def test_threads_must_be_positive():
    with pytest.raises(ConfigError, match="--threads must be a positive integer"):
        from resbench.settings.config import validate_config
        validate_config(TrainConfig(threads=0))
    assert config_from_args(train_flag_parser().parse_args(["--threads", "auto"])).threads is None


def test_sweep_jobs_split_the_cores(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nresnet_depth = [8]\nseed = [1, 2]\n')
    assert main(["sweep", "--grid", str(grid), "--runs_dir", str(tmp_path / "runs"), "--jobs", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    share = max(1, cpus.available_cores() // 2)
    assert out.count(f"--threads {share} --save") == 2
    assert main(["sweep", "--grid", str(grid), "--runs_dir", str(tmp_path / "runs"), "--jobs", "2", "--dry-run",
                 "--", "--threads", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--threads 3 --save") == 2 and f"--threads {share} --save" not in out  # the user's value wins


def test_a_busy_machine_is_announced(monkeypatch):
    monkeypatch.setattr(cpus, "load_average", lambda: 9.5)
    assert "load average 9.5 on 2 cores" in cpus.busy_warning(cores=2)
    monkeypatch.setattr(cpus, "load_average", lambda: 1.5)
    assert cpus.busy_warning(cores=2) is None
    assert cpus.threads_per_job(4, cores=2) == 1 and cpus.threads_per_job(2, cores=16) == 8


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
    assert progress.clock(3725.4) == "1:02:05" and progress.clock(None) == "?" and progress.clock(59.6) == "0:01:00"


# ---------------------------------------------------------------- 3. flags

@pytest.mark.parametrize("argv, expected", [
    (["--tensorboard"], {"tensorboard": True}),
    (["--tensorboard", "false"], {"tensorboard": False}),
    (["--sync_bn", "--deterministic", "--seed", "3"], {"sync_bn": True, "deterministic": True, "seed": 3}),
    (["--deterministic=false"], {"deterministic": False}),
    (["--compile"], {"compile": "true"}),
    (["--compile", "auto", "--tensorboard"], {"compile": "auto", "tensorboard": True}),
    (["--compile", "--optim_ni", "5"], {"compile": "true", "optim_ni": 5}),
    (["--data-name", "Digits_x32", "--optim-weight-decay", "0.01"],
     {"data_name": "Digits_x32", "optim_weight_decay": 0.01}),
    (["--sync", "--resnet_d", "8"], {"sync_bn": True, "resnet_depth": 8}),  # abbreviations still work
])
def test_train_flags_as_switches_and_dashed(argv, expected):
    cfg = config_from_args(train_flag_parser().parse_args(argv))
    assert {key: getattr(cfg, key) for key in expected} == expected


@pytest.mark.parametrize("argv, dest, value", [
    (["data", "list", "--data-root", "here"], "data_root", "here"),
    (["data", "download", "all", "--data-root", "here"], "data_root", "here"),
    (["eval", "--ckpt", "x.pt", "--temperature-scaling"], "temperature_scaling", True),
    (["sweep", "--runs-dir", "elsewhere"], "runs_dir", Path("elsewhere")),
    (["bench", "--resnet-depth", "8", "--batch-size", "4", "--compile"], "batch_size", 4),
    (["train", "--eval-every", "7"], "eval_every", 7),
])
def test_every_command_takes_the_dashed_spelling(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_help_and_errors_name_the_flags_once(run_cli):
    helped = run_cli("train", "--help", check=True).stdout
    assert "--data_name DATA_NAME" in helped and "--data-name" not in helped
    bad = run_cli("train", "--resnet-depth", "abc")
    assert bad.returncode == 2 and "argument --resnet_depth: invalid int value: 'abc'" in bad.stderr


def test_save_help_shows_one_default():
    helped = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    save = helped[helped.index("--save SAVE run folder"):helped.rindex("--mixed_precision MIXED_PRECISION")]
    assert save.count("default") == 1


def test_train_has_the_mirror_its_errors_advise(tmp_path, run_cli):
    """A missing CIFAR-10, an unreachable official URL: the fix named works as a train flag."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    proc = run_cli("train", "--data_name", "CIFAR10_x32", "--data_root", tmp_path / "data", "--mirror", mirror,
                   "--optim_ni", "1")
    assert proc.returncode == 2
    assert f"cifar-10-python.tar.gz not found in mirror folder {mirror}" in proc.stderr


# ---------------------------------------------------------------- 11. config files

def test_a_toml_config_with_flags_over_it(tmp_path):
    (tmp_path / "run.toml").write_text('data_name = "Digits_x32"\nresnet_depth = 8\noptim_lr = 0.05\n'
                                       'tensorboard = true\ncompile = "false"\n')
    cfg = config_from_args(train_flag_parser().parse_args(["--config", str(tmp_path / "run.toml"),
                                                           "--optim-lr", "0.2"]))
    assert (cfg.data_name, cfg.resnet_depth, cfg.optim_lr, cfg.tensorboard, cfg.compile) == (
        "Digits_x32", 8, 0.2, True, "false")


@pytest.mark.parametrize("text, message", [
    ("resnet_depth = 8\nlearning_rate = 0.1\n", "unknown setting(s) learning_rate; the keys are the train flags"),
    ('resnet_depth = "deep"\n', "resnet_depth = 'deep' is not a valid --resnet_depth"),
    ("resnet_depth = [8]\n", "resnet_depth = [8] is not a valid --resnet_depth"),
    ("resnet_depth = \n", "cannot read --config"),
    ('data_root = ["x"]\n', "data_root = ['x'] is not a valid --data_root (an array where one value goes)"),
    ("data_root = {a = 1}\n", "data_root = {'a': 1} is not a valid --data_root (a table where one value goes)"),
    ("save = 1979-05-27\n", "is not a valid --save (a date or time where one value goes)"),
    ('data_name = "Digits_x32"\ndata_root = "a\\u0000b"\n', "--data_root holds a NUL character"),
    ('data_name = "Digits_x32"\nthreads = 1000000000000\n', "--threads must be from 1 to 4096"),
    pytest.param("seed = " + "[" * 5000 + "]" * 5000 + "\n", "its values are nested too deeply", id="deep-nesting"),
])
def test_a_bad_config_file_is_one_clear_line(tmp_path, capsys, text, message):
    (tmp_path / "run.toml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--save", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_config_or_grid_that_is_no_small_regular_file_is_one_line_at_once(tmp_path, capsys):
    """A FIFO would block the read forever, /dev/zero never end, a huge file fill the memory."""
    fifo, zero, huge = tmp_path / "fifo.toml", tmp_path / "zero.toml", tmp_path / "huge.toml"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    with open(huge, "wb") as f:
        f.truncate(2 << 20)  # sparse: 2 MiB of NULs, nothing written
    with fails_if_blocked(60, "the read blocked"):  # without the bound the FIFO blocks
        for path, reason in ((fifo, "it is not a regular file"), (zero, "it is not a regular file"),
                             (huge, "it is larger than 1,048,576 bytes"), (tmp_path, "it is a folder")):
            assert main(["train", "--config", str(path)]) == 2
            assert capsys.readouterr().err == f"error: cannot read --config {path}: {reason}" + (
                " (a device, FIFO or socket)\n" if "regular" in reason else
                ", more than resbench reads\n" if "larger" in reason else ", not a file\n")
            assert main(["sweep", "--grid", str(path), "--dry-run"]) == 2
            assert capsys.readouterr().err.startswith(f"error: cannot read grid {path}: {reason}")


def test_a_run_is_repeated_from_its_config_json_alone(tmp_path):
    first = tiny(tmp_path / "first", seed=3, optim_lr=0.05)
    train(first)
    args = train_flag_parser().parse_args(["--config", str(tmp_path / "first" / "config.json"),
                                           "--save", str(tmp_path / "again")])
    again = config_from_args(args)
    assert dataclasses.replace(again, save=first.save) == first
    train(again)
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("first", "again")]
    for key in ("best_val_acc", "tst_acc", "tst_nll", "best_iter", "params"):
        assert summaries[0][key] == summaries[1][key], key  # CPU runs are deterministic: the same, to the bit
    weights = [torch.load(tmp_path / name / "best.pt", weights_only=True) for name in ("first", "again")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_config_and_resume_do_not_go_together(tmp_path, capsys):
    (tmp_path / "run.toml").write_text("resnet_depth = 8\n")
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--resume", str(tmp_path)]) == 2
    assert "--config and --resume cannot go together" in capsys.readouterr().err


# ---------------------------------------------------------------- 10. smaller points

HELP_COMMANDS = [[], ["train"], ["data"], ["data", "download"], ["data", "list"], ["eval"], ["sweep"], ["table"],
                 ["compare"], ["plot"], ["bench"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "resbench")
def test_help_does_not_import_torch(command):
    code = ("import sys; from resbench.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    proc = subprocess.run([sys.executable, "-c", code, *command, "--help"], env=cli_env(), capture_output=True,
                          text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: resbench" in proc.stdout


def test_top_level_help_has_examples(run_cli):
    helped = run_cli("--help", check=True).stdout
    assert "examples:" in helped and "resbench train --data_name Digits_x32" in helped
    assert "giung2-dev" in helped and "--data-name" in helped


def test_data_list_names_the_demo_and_the_fix(tmp_path, run_cli):
    out = run_cli("data", "list", "--data_root", tmp_path, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert lines["Digits_x32"].split()[1:4] == ["complete", "1497", "300"] and "built in" in lines["Digits_x32"]
    assert f"`resbench data download CIFAR100_x32 --data_root {tmp_path}`" in lines["CIFAR100_x32"]


def test_sweep_prints_each_run_and_its_figures(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nresnet_depth = [8]\nseed = [1]\n'
                    '[flags]\noptim_ni = 4\neval_every = 2\nbatch_size = 16\ndevice = "cpu"\n')
    proc = subprocess.run([sys.executable, "-m", "resbench", "sweep", "--grid", str(grid), "--runs_dir",
                           str(tmp_path / "runs")], env=cli_env(), capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "runs" / "Digits_x32" / "R8x1-b16-i4-lr0.1-wd0.001-s1"
    summary = json.loads((folder / "summary.json").read_text())
    assert f"[start 1/1] {folder} (new; its output goes to {folder / 'stdout.log'})" in proc.stdout
    figures = f"val/acc {summary['best_val_acc']:.4f}, tst/acc {summary['tst_acc']:.4f}"
    assert f"[1/1] {folder}: finished: {figures}" in proc.stdout


def test_sweep_dry_run_names_downloads_and_time(tmp_path, run_cli):
    (tmp_path / "data" / "downloads").mkdir(parents=True)
    (tmp_path / "data" / "downloads" / "cifar-100-python.tar.gz").write_bytes(b"placed")
    proc = run_cli("sweep", "--grid", "seed", "--runs_dir", tmp_path / "runs", "--dry-run", "--", "--data_root",
                   tmp_path / "data", check=True)
    out = proc.stdout
    assert "CIFAR10_x32: prepared in" in out and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in out
    assert f"CIFAR100_x32: prepared in {tmp_path / 'data' / 'CIFAR100_x32'} by the first run that needs it, from " \
           f"the archive already in {tmp_path / 'data' / 'downloads' / 'cifar-100-python.tar.gz'}" in out
    # The reference's 26 wall times: 963.4 minutes in all (seed-runs.tsv).
    assert "time: the same iterations took the reference 16:03:24 on one GeForce RTX 3090" in out
    assert not (tmp_path / "runs").exists()


def test_bench_warns_when_its_windows_spread():
    from resbench.bench.measure import spread_warning

    steady = {"images_per_sec": 100.0, "images_per_sec_min": 95.0, "images_per_sec_max": 110.0}
    shaky = {**steady, "images_per_sec_min": 70.0}
    assert spread_warning(steady) is None
    assert "spread 40% (70.0 to 110.0 images/s), more than 20%" in spread_warning(shaky)


def test_bench_runs_with_threads_and_dashed_flags(run_cli, tmp_path):
    proc = run_cli("bench", "--device", "cpu", "--data-name", "Digits_x32", "--resnet-depth", "8", "--batch-size",
                   "8", "--warmup", "0", "--iters", "1", "--windows", "1", "--threads", "1", "--json", check=True)
    assert json.loads(proc.stdout)["threads"] == 1


def test_slurm_example_signals_the_job_steps():
    """`--signal=B:...` reaches the batch shell only; the srun tasks (torchrun, the ranks) must get it."""
    directives = [line for line in (REPO / "examples" / "slurm_2nodes.sbatch").read_text().splitlines()
                  if line.startswith("#SBATCH --signal")]
    assert directives == ["#SBATCH --signal=TERM@120"]


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


@pytest.mark.parametrize("key", ["sync_bn", "resnet_depth", "mixed_precision"])
def test_a_config_file_cannot_unset_a_setting_that_needs_a_value(tmp_path, key):
    """null unsets only the optional settings (clipping, threads, ...): a switch is not silently off."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({key: None}))
    with pytest.raises(ConfigError, match=f"{key} = None is not a valid --{key}"):
        config_from_args(train_flag_parser().parse_args(["--config", str(path)]))
    path.write_text(json.dumps({"optim_global_clipping": None, "threads": None}))
    cfg = config_from_args(train_flag_parser().parse_args(["--config", str(path)]))
    assert (cfg.optim_global_clipping, cfg.threads) == (None, None)


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    """`resbench sweep --grid wd --dry-run | head -1`: no traceback when the pipe closes."""
    proc = subprocess.Popen([sys.executable, "-m", "resbench", "sweep", "--grid", "wd", "--dry-run", "--runs_dir",
                             str(tmp_path / "runs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    assert proc.stdout.readline().startswith(b"sweep: 104 runs")
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=LIMIT) == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr
