"""`resbench sweep`: grids, planning, the local launcher, and runs that never outlive their sweep nor
import from the folder it runs in."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hand_runs import assert_pngs

from conftest import (
    DIGITS_GRID,
    LIMIT,
    REPO,
    cli_env,
    fails_if_blocked,
    gone,
    process_tree,
    resbench_in_process,
    wait_until,
)
from resbench.cli.main import main
from resbench.device import cpus


def plan_lines(stdout: str) -> list[tuple[str, str]]:
    """(state, folder) for every run the sweep lists."""
    return [tuple(line.split()[:2]) for line in stdout.splitlines() if line.startswith("  ") and
            line.split()[0] in ("new", "resume", "skip")]


def test_sweep_help_names_every_ready_grid(cli):
    """`--grid imagenet` was a grid sweep planned, but its help named only seed and wd (issue 39)."""
    from resbench.sweep.grid import READY_GRIDS

    help_text = " ".join(cli("sweep", "--help", check=True).stdout.split())
    assert [name for name in READY_GRIDS if f"`{name}`: " not in help_text] == []


def test_sweep_seed_grid_dry_run_lists_26_runs(tmp_path, cli):
    proc = cli("sweep", "--grid", "seed", "--runs_dir", tmp_path, "--dry_run", "--", "--optim_ni", "2000",
               check=True)
    runs = plan_lines(proc.stdout)
    assert len(runs) == 26 and {state for state, _ in runs} == {"new"}
    folders = [Path(folder) for _, folder in runs]
    assert folders[0] == tmp_path / "CIFAR10_x32" / "R20x1-b256-i2k-lr0.1-wd0.001-s42"
    # The seed's fp16 rows are named as the GPUs that train them name them, on this CPU too (issue 39).
    assert sum(f.name.endswith("-fp16") for f in folders) == 4 and not any(f.name.endswith("-bf16") for f in folders)
    assert [f.parent.name for f in folders].count("TinyImageNet200_x64") == 5
    assert "train --data_name CIFAR10_x32 --resnet_depth 20 --resnet_width 1 --optim_ni 2000" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run creates nothing


def test_a_cpu_run_of_a_mixed_precision_row_keeps_the_folder_it_was_named_before(tmp_path):
    """`--mixed_precision true --device auto` trained on a CPU was named -bf16 (the precision it trained
    in); named -fp16 now (the row it is), a folder of the old name is still found and resumed."""
    from resbench.settings.config import TrainConfig, run_folder_of

    cfg = TrainConfig(data_name="Digits_x32", resnet_depth=8, mixed_precision="true")
    assert run_folder_of(cfg, tmp_path) == tmp_path / "Digits_x32" / "R8x1-b256-i48k-lr0.1-wd0.001-s42-fp16"
    earlier = tmp_path / "Digits_x32" / "R8x1-b256-i48k-lr0.1-wd0.001-s42-bf16"
    earlier.mkdir(parents=True)
    assert run_folder_of(cfg, tmp_path) == (earlier if not torch.cuda.is_available() else earlier.with_name(
        "R8x1-b256-i48k-lr0.1-wd0.001-s42-fp16"))
    assert run_folder_of(dataclasses.replace(cfg, device="cpu"), tmp_path) == earlier  # bf16 as asked


# A run that is still training when it is stopped; eager, as the signals do not depend on the step
# (--compile auto would spend its first 5 s compiling).
LONG_RUN = 'optim_ni = 3000\ncompile = "false"'


def test_sweep_skips_finished_and_resumes_started_runs(tmp_path, cli):
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("[1, 2]", "[1, 2, 3]"))
    runs_dir = tmp_path / "runs"
    finished = runs_dir / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s1"
    started = runs_dir / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s2"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    started.mkdir()
    proc = cli("sweep", "--grid", grid, "--runs_dir", runs_dir, "--dry_run", check=True)
    assert plan_lines(proc.stdout) == [("skip", str(finished)), ("resume", str(started)),
                                       ("new", str(runs_dir / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s3"))]
    assert "3 runs: 1 to run, 1 to resume, 1 finished (skipped)" in proc.stdout


def test_a_terminated_sweep_stops_its_runs_saved_and_starts_no_more(tmp_path):
    """`kill SWEEP_PID` (or `timeout`): the running run saves its state, queued runs never start."""
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("optim_ni = 10", LONG_RUN))
    runs_dir = tmp_path / "runs"
    sweep = subprocess.Popen([sys.executable, "-m", "resbench", "sweep", "--grid", str(grid), "--runs_dir",
                              str(runs_dir), "--jobs", "1"], env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    first = runs_dir / "Digits_x32" / "R8x1-b32-i3k-lr0.1-wd0.001-s1"
    wait_until(lambda: (first / "last.pt").exists(), sweep)
    sweep.send_signal(signal.SIGTERM)
    output = sweep.communicate(timeout=LIMIT)[0]
    assert sweep.returncode == 130, output
    assert "stopped by a signal at iteration" in (first / "stdout.log").read_text()
    assert not (runs_dir / "Digits_x32" / "R8x1-b32-i3k-lr0.1-wd0.001-s2").exists()


def test_sweep_rejects_unknown_grid_keys(tmp_path, cli):
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nlearning_rate = [0.1]\n')
    proc = cli("sweep", "--grid", grid, "--dry_run")
    assert proc.returncode == 2
    assert "unknown key(s) learning_rate" in proc.stderr and "Traceback" not in proc.stderr


def sweep_main(*args: object) -> tuple[int, str, str]:
    """`resbench sweep ARGS...` in this process (planning needs no subprocess): exit status, stdout, stderr."""
    proc = resbench_in_process("sweep", *args)
    return proc.returncode, proc.stdout, proc.stderr


BAD_GRIDS = {  # grid file text: what the error must say about its first bad run
    'resnet_depth = ["abc"]': "run 1 of 1 (--data_name Digits_x32 --resnet_depth abc): argument --resnet_depth: "
                              "invalid int value: 'abc'",
    "resnet_depth = [[8]]": "resnet_depth holds an array where one value goes",
    "seed = {a=1}": "seed holds a table where one value goes",
    'data_root = [["a"]]': "data_root holds an array where one value goes",
    '[flags]\ndata_root = ["a"]': "data_root holds an array where one value goes",
    '[flags]\nbatch_size = "abc"': "argument --batch_size: invalid int value: 'abc'",
    'data_name = ["Digits_x32", "Nope"]': "run 2 of 2 (--data_name Nope): unknown data_name 'Nope'",
    "resnet_depth = [8, 9]": "run 2 of 2 (--data_name Digits_x32 --resnet_depth 9): unsupported resnet depth 9",
    "[flags]\noptim_lr = -1": "--optim_lr must be a positive number, got -1.0",
    "flags = 3": "flags must be a table",
    'precision = [["fp32"]]': "precision must be one of fp32, fp16, bf16, not ['fp32']",
    "seed = []": "seed is an empty list, so the grid has no runs",
    '[flags]\nsave = "x"': "--save cannot be a flag of a sweep",
    '[flags]\nresume = "x"': "--resume cannot be a flag of a sweep",
}


@pytest.mark.parametrize("text", BAD_GRIDS)
def test_sweep_refuses_a_bad_grid_before_running_anything(tmp_path, text):
    grid = tmp_path / "grid.toml"
    grid.write_text(text if text.startswith("data_name") else f'data_name = "Digits_x32"\n{text}\n')
    code, out, err = sweep_main("--grid", grid, "--runs_dir", tmp_path / "runs", "--dry_run")
    assert code == 2 and out == ""
    assert err.startswith(f"error: grid {grid}") and BAD_GRIDS[text] in err
    assert err.count("\n") == 1 and "usage" not in err
    assert not (tmp_path / "runs").exists()


def test_sweep_refuses_a_grid_of_a_billion_runs_without_enumerating_it(tmp_path):
    grid = tmp_path / "grid.toml"
    axis = "[" + ", ".join(map(str, range(1, 1001))) + "]"
    grid.write_text(f'data_name = "Digits_x32"\nseed = {axis}\noptim_ni = {axis}\neval_every = {axis}\n')
    code, out, err = sweep_main("--grid", grid, "--runs_dir", tmp_path / "runs", "--dry_run")
    assert code == 2 and out == "" and err == (f"error: grid {grid} has 1,000,000,000 runs, more than the 10,000 "
                                               "one sweep plans; split it into several grids\n")
    grid.write_text(f'data_name = "Digits_x32"\noptim_ni = {axis}\n')
    code, out, err = sweep_main("--grid", grid, "--seeds", *range(11), "--dry_run")
    assert code == 2 and err.startswith(f"error: grid {grid} has 11,000 runs, more than the 10,000")


@pytest.mark.parametrize("flags, message", [
    (["--optim_lr", "-1"], "--optim_lr must be a positive number"),
    (["--save", "x"], "--save cannot be a flag of a sweep"),
    (["--resume=x"], "--resume cannot be a flag of a sweep"),
    (["--runs_dir", "x"], "--runs_dir is a sweep option: put it before `--`"),
    (["--seed"], "argument --seed: expected one argument"),
])
def test_sweep_refuses_bad_train_flags_before_running_anything(tmp_path, flags, message):
    code, out, err = sweep_main("--runs_dir", tmp_path / "runs", "--", *flags)
    assert code == 2 and out == ""
    assert err.startswith("error: seed grid, run 1 of 26 (--data_name CIFAR10_x32 ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_sweep_refuses_an_unreadable_grid_and_a_runs_dir_below_a_file(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b'data_name = "Digits_\xff"\n')
    code, _, err = sweep_main("--grid", grid, "--dry_run")
    assert code == 2 and err.startswith(f"error: cannot read grid {grid}: 'utf-8' codec can't decode byte 0xff")
    grid.write_text(DIGITS_GRID)
    (tmp_path / "a_file").write_text("")
    for runs_dir in (tmp_path / "a_file", tmp_path / "a_file" / "runs"):
        code, _, err = sweep_main("--grid", grid, "--runs_dir", runs_dir)
        assert code == 2
        assert err == f"error: --runs_dir {runs_dir} is not a folder ({tmp_path / 'a_file'} is a file); name a folder\n"


def test_sweep_refuses_a_file_or_a_link_where_a_run_folder_goes(tmp_path):
    """Below --runs_dir, every level of a run's folder is the sweep's own: a file there, or a link planted at
    <runs_dir>/<data_name> or at the run's folder (issue 37: a local sweep trained the whole run into the link's
    target), stops the sweep with one line before anything runs."""
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("seed = [1, 2]", "seed = [1]"))
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    runs.mkdir()
    elsewhere.mkdir()
    run = runs / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s1"
    for planted, why in ((runs / "Digits_x32", "a file stands there, where resbench makes a folder"),
                         (runs / "Digits_x32", "a symbolic link stands there; resbench never writes through one"),
                         (run, "a symbolic link stands there; resbench never writes through one")):
        if why.startswith("a file"):
            planted.write_text("")
        else:
            planted.parent.mkdir(exist_ok=True)
            planted.symlink_to(elsewhere)
        code, out, err = sweep_main("--grid", grid, "--runs_dir", runs)
        assert (code, out, err) == (2, "", f"error: {planted}: {why}; remove it, then start the sweep again\n")
        planted.unlink()
    assert list(elsewhere.iterdir()) == []


def test_status_and_data_list_never_wait_on_a_fifo_planted_as_a_file_they_read(tmp_path):
    """Issue 37's hostile round: a FIFO as a run's stdout.log blocked `sweep --status` forever, and one as an
    imported set's dataset.json blocked `data list` (and train, eval on the set); each file is now opened
    without blocking and refused unless regular."""
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("seed = [1, 2]", "seed = [1]"))
    run = tmp_path / "runs" / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s1"
    run.mkdir(parents=True)
    os.mkfifo(run / "stdout.log")
    (tmp_path / "data" / "Mine").mkdir(parents=True)
    os.mkfifo(tmp_path / "data" / "Mine" / "dataset.json")
    with fails_if_blocked(60, "a FIFO was opened to be read"):
        code, out, _ = sweep_main("--grid", grid, "--runs_dir", tmp_path / "runs", "--status")
        listed = resbench_in_process("data", "list", "--data_root", tmp_path / "data")
    assert code == 0 and out.endswith(f"  new      {run}\n")
    assert listed.returncode == 0 and "Mine                  damaged" in listed.stdout
    assert "dataset.json (it is not a regular file (a device, FIFO or socket)); import the set again" in listed.stdout


def evil_folder(tmp_path: Path) -> Path:
    """A working folder whose modules shadow the ones resbench imports; each leaves a marker if imported."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    for module in ("tqdm", "torch", "numpy", "resbench"):
        (folder / f"{module}.py").write_text(EVIL_MODULE.format(marker=str(tmp_path / f"imported-{module}")))
    return folder


@pytest.mark.parametrize("safe_path", [True, False])
def test_run_commands_leave_the_current_folder_off_the_import_path(tmp_path, safe_path):
    from resbench.sweep.plan import child_python

    if safe_path and sys.version_info < (3, 11):
        pytest.skip("python -P needs Python 3.11")
    proc = subprocess.run([*child_python("resbench", safe_path), "--version"], cwd=evil_folder(tmp_path), env=cli_env(),
                          capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0 and proc.stdout.startswith("resbench "), proc.stderr
    assert list(tmp_path.glob("imported-*")) == []


def test_a_sweep_never_imports_from_the_folder_it_runs_in(tmp_path, monkeypatch):
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("seed = [1, 2]", "seed = [1]").replace("optim_ni = 10", "optim_ni = 2"))
    monkeypatch.chdir(evil_folder(tmp_path))
    code, out, _ = sweep_main("--grid", grid, "--runs_dir", tmp_path / "runs")
    assert code == 0 and "sweep: 1 of 1 runs finished" in out, out
    assert list(tmp_path.glob("imported-*")) == []


def test_a_sigkilled_sweep_stops_its_running_run_with_the_state_saved(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("seed = [1, 2]", "seed = [1]").replace("optim_ni = 10", LONG_RUN))
    runs_dir = tmp_path / "runs"
    sweep = subprocess.Popen([sys.executable, "-m", "resbench", "sweep", "--grid", str(grid), "--runs_dir",
                              str(runs_dir)], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = runs_dir / "Digits_x32" / "R8x1-b32-i3k-lr0.1-wd0.001-s1"
    wait_until(lambda: (run / "last.pt").exists(), sweep)
    children = process_tree(sweep.pid)[1:]
    assert len(children) == 1, children
    sweep.kill()  # forwards nothing: the run must notice by itself
    sweep.communicate(timeout=LIMIT)
    wait_until(lambda: gone(children[0]))
    assert "stopped by a signal at iteration" in (run / "stdout.log").read_text()
    assert torch.load(run / "last.pt", weights_only=True)["state"]["step"] > 0


def test_without_prctl_a_thread_notices_that_the_sweep_died(monkeypatch):
    from resbench.sweep import local

    parents, sent = iter([100, 100, 1]), []  # the sweep (pid 100) dies: the run is re-parented to pid 1
    monkeypatch.setattr(local.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(local.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    local.watch_parent(100, interval=0)
    assert sent == [(os.getpid(), signal.SIGTERM)]


def test_a_run_whose_sweep_died_before_it_started_stops_at_once(tmp_path):
    gone_pid = subprocess.Popen([sys.executable, "-c", ""])
    gone_pid.wait()
    env = cli_env() | {"RESBENCH_SWEEP_PID": str(gone_pid.pid)}
    proc = subprocess.run([sys.executable, "-m", "resbench", "data", "list", "--data_root", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 130 and proc.stderr == "interrupted\n", proc.stderr


def plan(cli, *args) -> list[str]:
    proc = cli("sweep", *args, "--dry_run", check=True)
    return [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("  new")]


def test_sweep_seeds_and_the_reference_weight_decay_grid(tmp_path, cli):
    seeded = plan(cli, "--grid", "seed", "--seeds", "42", "43", "44", "--runs_dir", tmp_path)
    assert len(seeded) == 78 and seeded[:3] == [str(tmp_path / "CIFAR10_x32" / f"R20x1-b256-i48k-lr0.1-wd0.001-s{s}")
                                                for s in (42, 43, 44)]
    wd = plan(cli, "--grid", "wd", "--runs_dir", tmp_path)
    assert len(wd) == 104 and {Path(p).name.split("-wd")[1].split("-")[0] for p in wd} == {"0.0001", "0.0003", "0.001",
                                                                                          "0.003"}
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = "Digits_x32"\noptim_lr = [0.05, 0.1]\nseed = [1]\n')
    assert [Path(p).name for p in plan(cli, "--grid", grid, "--runs_dir", tmp_path)] == [
        "R20x1-b256-i48k-lr0.05-wd0.001-s1", "R20x1-b256-i48k-lr0.1-wd0.001-s1"]
    refused = cli("sweep", "--grid", grid, "--seeds", "1", "--dry_run")
    assert refused.returncode == 2 and "sets seeds itself" in refused.stderr


def test_sweep_jobs_split_the_cores(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nresnet_depth = [8]\nseed = [1, 2]\n')
    assert main(["sweep", "--grid", str(grid), "--runs_dir", str(tmp_path / "runs"), "--jobs", "2", "--dry_run"]) == 0
    out = capsys.readouterr().out
    share = max(1, cpus.available_cores() // 2)
    assert out.count(f"--threads {share} --save") == 2
    assert main(["sweep", "--grid", str(grid), "--runs_dir", str(tmp_path / "runs"), "--jobs", "2", "--dry_run",
                 "--", "--threads", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--threads 3 --save") == 2 and f"--threads {share} --save" not in out  # the user's value wins


def test_sweep_prints_each_run_and_its_figures(tmp_path, cli):
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nresnet_depth = [8]\nseed = [1]\n'
                    '[flags]\noptim_ni = 4\neval_every = 2\nbatch_size = 16\ndevice = "cpu"\n')
    proc = cli("sweep", "--grid", grid, "--runs_dir", tmp_path / "runs", check=True)
    folder = tmp_path / "runs" / "Digits_x32" / "R8x1-b16-i4-lr0.1-wd0.001-s1"
    summary = json.loads((folder / "summary.json").read_text())
    assert f"[start 1/1] {folder} (new; its output goes to {folder / 'stdout.log'})" in proc.stdout
    figures = f"val/acc {summary['best_val_acc']:.4f}, tst/acc {summary['tst_acc']:.4f}"
    assert f"[1/1] {folder}: finished: {figures}" in proc.stdout


def test_sweep_dry_run_names_downloads_and_time(tmp_path, cli):
    (tmp_path / "data" / "downloads").mkdir(parents=True)
    (tmp_path / "data" / "downloads" / "cifar-100-python.tar.gz").write_bytes(b"placed")
    proc = cli("sweep", "--grid", "seed", "--runs_dir", tmp_path / "runs", "--dry_run", "--", "--data_root",
               tmp_path / "data", check=True)
    out = proc.stdout
    assert "CIFAR10_x32: prepared in" in out and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in out
    assert f"CIFAR100_x32: prepared in {tmp_path / 'data' / 'CIFAR100_x32'} by the first run that needs it, from " \
           f"the archive already in {tmp_path / 'data' / 'downloads' / 'cifar-100-python.tar.gz'}" in out
    # The reference's 26 wall times: 963.4 minutes in all (seed-runs.tsv).
    assert "time: the same iterations took the reference 16:03:24 on one GeForce RTX 3090" in out
    assert not (tmp_path / "runs").exists()


def test_slurm_example_signals_the_job_steps():
    """`--signal=B:...` reaches the batch shell only; the srun tasks (torchrun, the ranks) must get it."""
    directives = [line for line in (REPO / "examples" / "slurm_2nodes.sbatch").read_text().splitlines()
                  if line.startswith("#SBATCH --signal")]
    assert directives == ["#SBATCH --signal=TERM@120"]


EVIL_MODULE = "import pathlib\npathlib.Path({marker!r}).touch()\nraise SystemExit('imported from the current folder')\n"


# ---------------------------------------------------------------- runs on several devices

def test_the_imagenet_grid_keeps_the_references_batchnorm_on_any_gpus_that_divide_its_devices(tmp_path, cli):
    """Its six rows, on the reference's 2 (32 px) or 4 (64 px) GPUs: one process makes them up with --bn_groups 2
    or 4, two processes with 1 or 2; four cannot split the 32 px rows' two. Planned for a cluster (Ray, SLURM),
    so this machine's memory is not asked (a depth-50 64 px run at 1,024 per process needs about 32 GiB)."""
    one = cli("sweep", "--grid", "imagenet", "--runs_dir", tmp_path, "--launcher", "ray", "--dry_run", check=True)
    runs = [line for line in one.stdout.splitlines() if line.startswith("  new")]
    assert [Path(line.split()[1]).parent.name for line in runs] == ["ImageNet1k_x32"] * 3 + ["ImageNet1k_x64"] * 3
    assert [Path(line.split()[1]).name.split("-s42")[0] for line in runs[:1] + runs[3:4]] == [
        "R18x1-b1024-i128k-lr0.4-wd0.0001", "R18x1-b1024-i128k-lr0.4-wd0.0001"]
    assert runs[0].endswith("-bng2  [the reference's 2 GPUs as 1 process × 2 BatchNorm groups: 512 images per "
                            "BatchNorm, as there]")
    assert runs[5].endswith("-bng4  [the reference's 4 GPUs as 1 process × 4 BatchNorm groups: 256 images per "
                            "BatchNorm, as there]")
    assert "took the reference 34:10:48 on 2-4 GeForce RTX 3090 per run" in one.stdout  # imagenet-x.md: 34.2 hours
    two = cli("sweep", "--grid", "imagenet", "--runs_dir", tmp_path, "--launcher", "slurm", "--gpus_per_run", "2",
              "--dry_run", check=True).stdout
    assert two.count("[the reference's 2 GPUs as 2 processes (torchrun): 512 images per BatchNorm, as there]") == 3
    assert two.count("[the reference's 4 GPUs as 2 processes (torchrun) × 2 BatchNorm groups: 256 images per "
                     "BatchNorm, as there]") == 3
    assert " --gres=gpu:2 " in two  # sbatch's argv: each array task asks for its 2 GPUs (the plan: test_launchers)
    four = cli("sweep", "--grid", "imagenet", "--runs_dir", tmp_path, "--launcher", "ray", "--gpus_per_run", "4",
               "--dry_run")
    assert four.returncode == 2 and four.stderr == (
        "error: the ImageNet1k_x32 rows ran on 2 GPUs (512 images per BatchNorm); 4 processes per run cannot split "
        "them so: use --gpus_per_run 1 or 2, or a grid file of your own\n")
    assert list(tmp_path.iterdir()) == []


def test_a_local_sweep_trains_each_run_as_a_torchrun_of_gpus_per_run_processes(tmp_path, cli):
    """No GPU here: `--gpus_per_run 2 -- --device cpu` is a torchrun of 2 CPU processes (gloo) per run, each with
    its share of the cores; torchrun's workers import nothing from the folder the sweep runs in."""
    grid = tmp_path / "grid.toml"
    grid.write_text(DIGITS_GRID.replace("seed = [1, 2]", "seed = [1]").replace("optim_ni = 10", "optim_ni = 2"))
    proc = cli("sweep", "--grid", grid, "--runs_dir", tmp_path / "runs", "--gpus_per_run", "2", "--", "--compile",
               "false", cwd=evil_folder(tmp_path), check=True)
    [run] = (tmp_path / "runs" / "Digits_x32").iterdir()
    assert f"[1/1] {run}: finished" in proc.stdout and "[2 processes (torchrun)]" in proc.stdout
    assert list(tmp_path.glob("imported-*")) == []
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["config"]["threads"] == max(1, cpus.available_cores() // 2)


def test_runs_at_once_get_disjoint_gpus_and_a_sweep_that_needs_more_is_refused(monkeypatch):
    from resbench.errors import ResbenchError
    from resbench.sweep import local

    monkeypatch.setattr(local, "visible_gpus", lambda: ["3", "5", "6", "7", "9"])
    slots = local.gpu_slots(jobs=2, gpus_per_run=2)
    assert [slots.get(), slots.get()] == [["3", "5"], ["6", "7"]] and slots.empty()
    with pytest.raises(ResbenchError, match="--jobs 3 runs of --gpus_per_run 2 need 6 GPUs, and this machine shows 5"):
        local.gpu_slots(jobs=3, gpus_per_run=2)
    assert local.gpu_slots(jobs=4, gpus_per_run=0) is None  # runs on the device their flags name
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    assert local.gpu_slots(jobs=4, gpus_per_run=2) is None  # no CUDA: CPU processes


def test_a_rank_under_torchrun_stops_when_the_sweep_dies_though_torchrun_lives_on(monkeypatch):
    from resbench.sweep import local

    alive, sent = iter([True, True, False]), []
    monkeypatch.setattr(local, "process_exists", lambda pid: next(alive))
    monkeypatch.setattr(local.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    local.watch_sweep(100, interval=0)
    assert sent == [(os.getpid(), signal.SIGTERM)]


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


def test_sweep_trains_the_grid_and_skips_it_the_second_time(digits_runs, cli):
    runs = sorted((digits_runs / "Digits_x32").iterdir())
    assert [r.name for r in runs] == ["R8x1-b32-i10-lr0.1-wd0.001-s1", "R8x1-b32-i10-lr0.1-wd0.001-s2"]
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        assert (run / "stdout.log").stat().st_size > 0
    proc = cli("sweep", "--grid", digits_runs.parent / "grid.toml", "--runs_dir", digits_runs, check=True)
    assert {state for state, _ in plan_lines(proc.stdout)} == {"skip"}
