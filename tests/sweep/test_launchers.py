"""`resbench sweep --launcher slurm|ray` on real engines (issue 22): a single-node SLURM and a Ray
cluster of this machine (clusters.py), tiny runs of the offline Digits set. Each test that needs
an engine skips with one line where this machine cannot run it."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from clusters import (
    Ray,
    Slurm,
    ray_unavailable,
    slurm_unavailable,
    start_ray,
    start_slurm,
    stop_ray,
    stop_slurm,
    wait_for,
)

from conftest import cli_env, resbench_in_process
from resbench.errors import ResbenchError
from resbench.runs import schema

# Eager steps: a run of 1,000+ iterations would spend its first seconds compiling (--compile auto).
TINY = ["--resnet_depth", "8", "--batch_size", "16", "--eval_every", "50", "--threads", "1", "--compile", "false"]
LIMIT = 600
# The interrupted runs: long enough (about 13 s of training here) to be stopped after their second evaluation,
# to a minute early, to arrive mid-run. One uninterrupted run of it is what each must equal.
LONG_SEED, LONG_NI = 5, 300


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Slurm:
    if reason := slurm_unavailable():
        pytest.skip(reason)
    try:
        cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    except (OSError, subprocess.CalledProcessError, TimeoutError) as exc:  # e.g. a container without the rights
        pytest.skip(f"a local SLURM could not start on this machine: {exc}")
    yield cluster
    stop_slurm(cluster)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Ray:
    if reason := ray_unavailable():
        pytest.skip(reason)
    try:
        cluster = start_ray(tmp_path_factory.mktemp("ray"))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"a local Ray cluster could not start on this machine: {exc}")
    yield cluster
    stop_ray(cluster)


# A folder name a shell or sbatch would misread: spaces, both quotes, a comment, SLURM's `%` patterns, a command
# substitution, a line break, and issue 37's bytes that once added an sbatch option (all but its backslash).
HOSTILE_NAME = "a b#c %a %% $(touch PWNED) 'q' \"r\"\n#SBATCH --output=x '\"'\"' \"-\"-output=INJECTED"


def write_grid(folder: Path, seeds: list[int], optim_ni: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / "grid.toml"
    grid.write_text(f'data_name = ["Digits_x32"]\nseed = {seeds}\n[flags]\noptim_ni = {optim_ni}\n'
                    'data_root = "data"\n')
    return grid


def sweep(folder: Path, *args: str, env: dict | None = None, check: bool = True, new_process: bool = False):
    """`resbench sweep` in `folder`, as a user there would type it, with `env` added to its environment.

    In this process (a sweep to SLURM submits and ends; sbatch and the tasks are processes of their own),
    or in a `new_process`: a sweep to Ray is the cluster's driver, which must not outlive the command."""
    argv = ["sweep", "--grid", "grid.toml", "--runs_dir", "runs", *args, "--", *TINY]
    env = {**cli_env(), **(env or {})}
    if not new_process:
        proc = resbench_in_process(*argv, cwd=folder, env=env)
    else:
        proc = subprocess.run([sys.executable, "-m", "resbench", *argv], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=LIMIT)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_folders(folder: Path) -> list[Path]:
    return sorted((folder / "runs" / "Digits_x32").iterdir())


def figures(run: Path) -> tuple[list[dict], str]:
    """Every metrics.jsonl record without its wall time, and best.pt's SHA-256: what must not differ."""
    records = [{k: v for k, v in json.loads(line).items() if k not in schema.TIME_FIELDS}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return records, hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[dict], str]:
    """The figures of the long run trained alone, never stopped."""
    folder = tmp_path_factory.mktemp("alone")
    subprocess.run([sys.executable, "-m", "resbench", "train", "--data_name", "Digits_x32", "--seed", str(LONG_SEED),
                    "--optim_ni", str(LONG_NI), "--data_root", str(folder / "data"), *TINY, "--save", str(folder / "run")],
                   env=cli_env(), capture_output=True, timeout=LIMIT, check=True)
    return figures(folder / "run")


def output(run: Path) -> str:
    """The run's stdout.log so far ("" before the task has started)."""
    try:
        return (run / "stdout.log").read_text()
    except FileNotFoundError:
        return ""


def records_written(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


# ---------------------------------------------------------------- SLURM

def submitted_argv(monkeypatch) -> list[list[str]]:
    """The command lines the sweep runs sbatch with, recorded as it runs them."""
    from resbench.sweep import slurm

    calls, run = [], subprocess.run

    def record(argv, **kwargs):
        calls.append(argv)
        return run(argv, **kwargs)

    monkeypatch.setattr(slurm.subprocess, "run", record)
    return calls


def dry_run_submission(out: str) -> tuple[str, str]:
    """(the sbatch command line, the job script) a --dry_run prints."""
    tail = out.split(", sbatch would run:\n", 1)[1]
    argv, script = tail.split("\njob.sbatch:\n", 1)
    return argv, script


def test_a_grid_finishes_through_a_slurm_job_array(slurm, tmp_path, monkeypatch):
    """From a folder whose name is hostile to a shell and to sbatch: every path reaches sbatch as data."""
    from resbench.console import printable
    from resbench.sweep.slurm import JOB_SCRIPT

    tmp_path = tmp_path / HOSTILE_NAME
    write_grid(tmp_path, [1, 2, 3, 4], 10)
    argv, script = dry_run_submission(sweep(tmp_path, "--launcher", "slurm", "--dry_run", env=slurm.env).stdout)
    assert script == JOB_SCRIPT and " --array=0-3 " in argv
    calls = submitted_argv(monkeypatch)
    start = time.monotonic()
    out = sweep(tmp_path, "--launcher", "slurm", env=slurm.env).stdout
    assert "sweep: submitted SLURM job array " in out
    assert [printable(shlex.join(["sbatch", *call[1:]])) for call in calls] == [argv]  # --dry_run showed it
    launch = tmp_path / "runs" / ".launch"
    assert (launch / "job.sbatch").read_text() == JOB_SCRIPT and len(list(launch.glob("plan-*.json"))) == 1
    wait_for(lambda: len(list(tmp_path.glob("runs/Digits_x32/*/summary.json"))) == 4, LIMIT, "the job array")
    wall = time.monotonic() - start
    assert sweep(tmp_path, "--status").stdout.startswith("sweep status: 4 runs: 4 finished\n")
    print(f"slurm: 4 runs in {wall:.1f} s")
    assert all((run / "summary.json").is_file() and json.loads((run / "launch.json").read_text())["launcher"] == "slurm"
               for run in run_folders(tmp_path))
    again = sweep(tmp_path, "--launcher", "slurm", env=slurm.env).stdout
    assert "0 to run, 0 to resume, 4 finished (skipped)" in again and "submitted" not in again
    assert len(list(launch.glob("*_*.out"))) == 4  # SLURM's output, the folder's `%` kept literal
    assert not list(tmp_path.parent.rglob("PWNED")) and not list(tmp_path.parent.rglob("INJECTED*"))


def test_a_preempted_slurm_task_requeues_and_resumes_bit_identical(slurm, tmp_path, uninterrupted):
    write_grid(tmp_path, [LONG_SEED], LONG_NI)
    sweep(tmp_path, "--launcher", "slurm", env=slurm.env)
    [run] = run_folders(tmp_path)
    job = json.loads((run / "launch.json").read_text())["job"]
    wait_for(lambda: records_written(run) >= 2, LIMIT, "two evaluations")
    slurm.run("scancel", "--signal=TERM", job)  # what a preemption with a grace time sends
    wait_for(lambda: "requeued" in output(run), LIMIT, "the task to requeue itself")
    stopped_at = records_written(run)
    assert stopped_at < LONG_NI // 10 and (run / "last.pt").is_file() and not (run / "summary.json").exists()
    wait_for(lambda: slurm.release(job) or (run / "summary.json").is_file(), LIMIT, "the requeued task to finish")
    wait_for(lambda: slurm.queue() == [], LIMIT, "the task to end")
    assert "start 1," in (run / "stdout.log").read_text()  # SLURM_RESTART_COUNT: it ran twice
    assert figures(run) == uninterrupted


def test_a_slurm_task_at_its_time_limit_saves_and_requeues(slurm, tmp_path):
    """time=1 with --stop_before_limit_s 55: SIGTERM before the limit, when SLURM's periodic check finds the job
    within 55 s of it (it may be sent up to a minute early: here before training starts, or after
    some iterations). The run stops (saving what it has: exit status 130) and the task requeues
    itself. What follows is the preemption test's: the same signal, the next start resumes."""
    write_grid(tmp_path, [LONG_SEED + 1], 5000)  # longer than the time limit
    sweep(tmp_path, "--launcher", "slurm", "--slurm", "time=1", "--stop_before_limit_s", "55", env=slurm.env)
    [run] = run_folders(tmp_path)
    job = json.loads((run / "launch.json").read_text())["job"]
    wait_for(lambda: "requeued" in output(run), LIMIT, "the time limit's signal")
    first = output(run)
    assert "stopped by a signal at iteration" in first or "\ninterrupted\n" in first
    wait_for(lambda: slurm.queue() == [f"{job} PENDING BeginTime"], LIMIT, "the task to wait for its next start")
    cancel(slurm, job)


def cancel(slurm: Slurm, job: str) -> None:
    """Cancel a job for good: a task cancelled while running may requeue itself once more."""
    def gone() -> bool:
        subprocess.run(["scancel", job], env=slurm.env)
        time.sleep(2)
        return slurm.queue() == []
    wait_for(gone, LIMIT, "the job to end")


def test_slurm_bad_input_is_one_line_and_submits_nothing(slurm, tmp_path):
    write_grid(tmp_path, [1], 20)
    no_sbatch = sweep(tmp_path, "--launcher", "slurm", env={**slurm.env, "PATH": "/nonexistent"}, check=False)
    assert no_sbatch.returncode == 2 and no_sbatch.stderr.startswith("error: --launcher slurm needs sbatch on PATH")
    partition = sweep(tmp_path, "--launcher", "slurm", "--slurm", "partition=nope", env=slurm.env, check=False)
    assert partition.returncode == 2 and "sbatch refused the job array" in partition.stderr
    assert "invalid partition" in partition.stderr.lower() and len(partition.stderr.splitlines()) == 1
    gpus = sweep(tmp_path, "--launcher", "slurm", "--gpus_per_run", "4", env=slurm.env, check=False)
    assert gpus.returncode == 2 and "sbatch refused the job array" in gpus.stderr
    owned = sweep(tmp_path, "--launcher", "slurm", "--slurm", "array=0-9", env=slurm.env, check=False)
    assert owned.returncode == 2 and "the sweep sets --array itself" in owned.stderr
    assert slurm.queue() == [] and not (tmp_path / "runs" / "Digits_x32").exists()


HOSTILE_OPTIONS = [
    # (--slurm value, what the one error line says): issue 37's bypass of the quoting (a backslash inside quotes is
    # an escape to sbatch's #SBATCH parser), the same with -chdir, a value ending in a backslash, issue 31's cases
    ("comment=x\\'\"'\"'\" \"-\"-output={elsewhere}/INJECTED_%a\\'", "a quote or a backslash"),
    ("comment=x\\'\"'\"'\" \"-\"-chdir={elsewhere}\\'", "a quote or a backslash"),
    ("comment=ends in a backslash\\", "a quote or a backslash"),
    ("partition=debug --output={elsewhere}/OUTSIDE_%a.out", "one sbatch option per --slurm"),
    ("comment=x -output={elsewhere}/OUTSIDE_%a.out", "one sbatch option per --slurm"),
    ("output={elsewhere}/OUTSIDE_%a.out", "the sweep sets --output itself"),
    ("error={elsewhere}/e.out", "the sweep sets --error itself"),
    ("chdir={elsewhere}", "the sweep sets --chdir itself"),
    ("job_name=x", "the sweep sets --job-name itself"),
    ("signal=B:TERM@60", "the sweep sets --signal itself"),
    ("wrap=touch {elsewhere}/PWNED", "the sweep sets --wrap itself"),
    ("wait", "the sweep sets --wait itself"),
    ("o={elsewhere}/x", "not an sbatch option"),
    ("out={elsewhere}/x", "not an sbatch option"),  # an abbreviation sbatch itself would take for --output
    ("comment=a\n#SBATCH --output={elsewhere}/x", "holds a newline or another control character"),
    ("comment=a\x1b[2Jb", "holds a newline or another control character"),
    ("comment=" + "x" * 200_000, "its value is 200,000 characters long"),  # (the system refused to start sbatch)
]


def assert_refused(proc: subprocess.CompletedProcess, reason: str) -> None:
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and reason in err, \
        (proc.returncode, out, err)
    assert "\x1b" not in err


def hostile_sweeps(folder: Path, elsewhere: Path, options: list, *args: str, env: dict | None = None) -> None:
    """Hostile --slurm options, a runs folder with a backslash in its path (SLURM cannot name an output file there),
    and a link planted as a run's stdout.log or as its folder: each refused in one line with exit status 2, before
    anything is printed or written; no file of the user's changed."""
    write_grid(folder, [1], 20)
    for option, reason in options:
        assert_refused(sweep(folder, "--launcher", "slurm", "--slurm", option.format(elsewhere=elsewhere), *args,
                             env=env, check=False), reason)
    backslash = folder / "a\\b"
    write_grid(backslash, [1], 20)
    assert_refused(sweep(backslash, "--launcher", "slurm", *args, env=env, check=False), "holds a backslash")
    assert not (backslash / "runs").exists()
    victim = elsewhere / "victim.txt"
    victim.write_text("the user's own file\n")
    [run] = [folder / line.split()[1] for line in sweep(folder, "--status").stdout.splitlines()[1:]]
    run.mkdir(parents=True)
    (run / "stdout.log").symlink_to(victim)
    assert_refused(sweep(folder, "--launcher", "slurm", *args, env=env, check=False),
                   "stdout.log: a symbolic link stands there; resbench never writes through one; remove it")
    shutil.rmtree(run.parent)
    run.parent.symlink_to(elsewhere)  # <runs_dir>/Digits_x32: one level up (issue 37)
    assert_refused(sweep(folder, "--launcher", "slurm", *args, env=env, check=False),
                   "Digits_x32: a symbolic link stands there; resbench never writes through one; remove it")
    assert victim.read_text() == "the user's own file\n" and sorted(p.name for p in elsewhere.iterdir()) == ["victim.txt"]
    assert not list(folder.rglob("PWNED")) and not (folder / "runs" / ".launch").exists()
    run.parent.unlink()
    (folder / "runs" / ".launch").symlink_to(elsewhere)
    assert_refused(sweep(folder, "--launcher", "slurm", *args, env=env, check=False),
                   ".launch: a symbolic link stands there; resbench never writes through one; the sweep writes its "
                   "job scripts there: remove it")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.txt"]


def test_what_a_user_passes_or_plants_never_reaches_sbatch(slurm, tmp_path):
    """Issue 37's bypass and issue 31's case on the real SLURM: nothing submitted, nothing written outside."""
    (tmp_path / "elsewhere").mkdir()
    hostile_sweeps(tmp_path / "sweep", tmp_path / "elsewhere", HOSTILE_OPTIONS[:2], env=slurm.env)
    assert slurm.queue() == []


def test_a_dry_run_refuses_the_same_without_an_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    (tmp_path / "elsewhere").mkdir()
    hostile_sweeps(tmp_path / "sweep", tmp_path / "elsewhere", HOSTILE_OPTIONS, "--dry_run")


def test_the_job_script_is_one_constant_text():
    """Grep-style: JOB_SCRIPT is a plain string constant in slurm.py's source (no f-string, no formatting field
    filled in), no code formats it or adds to it, and what a submission writes is that constant."""
    from resbench.sweep import slurm

    tree = ast.parse(Path(slurm.__file__).read_text())
    [assigned] = [node for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(target, "id", None) == "JOB_SCRIPT" for target in node.targets)]
    assert isinstance(assigned.value, ast.Constant) and isinstance(assigned.value.value, str)
    uses = [node for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "JOB_SCRIPT"]
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for use in uses:  # every other use reads the text whole (writes or shows it): nothing goes into it
        parent = parents[use]
        assert use is assigned.targets[0] or isinstance(use.ctx, ast.Load), ast.dump(parent)
        assert not isinstance(parent, (ast.BinOp, ast.AugAssign)), ast.dump(parent)
        assert not (isinstance(parent, ast.Attribute) and parent.attr in ("format", "format_map", "replace"))
    assert "{" not in slurm.JOB_SCRIPT.replace("${PYTHONPATH:+:$PYTHONPATH}", "")


def test_sbatch_gets_each_option_as_one_argument(tmp_path, monkeypatch):
    from resbench.sweep.plan import plan_run
    from resbench.sweep.slurm import job_plan, sbatch_argv, slurm_options

    monkeypatch.chdir(tmp_path)
    run = plan_run(Path("runs"), ["--data_name", "Digits_x32", "--resnet_depth", "8"])
    options = slurm_options(["comment=a b; c $(d) #e %a", "exclusive", "mail_type=END"])
    assert options == {"comment": "a b; c $(d) #e %a", "exclusive": None, "mail-type": "END"}
    name, plan = job_plan([run])
    argv = sbatch_argv([run], options, tmp_path / "100%" / ".launch", name, 0)
    assert argv[:3] == ["sbatch", "--parsable", "--array=0-0"] and argv[-1] == name
    assert f"--output={tmp_path}/100%%/.launch/%A_%a.out" in argv and "--requeue" in argv
    assert "--comment=a b; c $(d) #e %a" in argv and "--exclusive" in argv and "--mail-type=END" in argv
    assert json.loads(plan)["tasks"] == [{"save": str(run.save), "command": run.command}]
    assert job_plan([run]) == (name, plan)  # named after its content: a dry run names the same file


def test_the_launch_folder_is_closed_to_others_writes_and_never_another_users(tmp_path, capsys):
    """slurmstepd opens SLURM's own output `<job>_<task>.out` in .launch following links, and job ids are
    predictable: whoever may add a name there could send a task's output into any file of the user's. A
    .launch others may write in (made under umask 002 in a group's folder) is closed when the sweep submits
    (a dry run only says so); one that another user owns is refused."""
    from resbench.sweep.slurm import own_launch_folder

    launch = tmp_path / "runs" / ".launch"
    launch.mkdir(parents=True)
    launch.chmod(0o777)
    own_launch_folder(tmp_path / "runs", create=False)
    assert launch.stat().st_mode & 0o777 == 0o777 and "writable by others; submitting makes it" in capsys.readouterr().out
    assert own_launch_folder(tmp_path / "runs").resolve() == launch.resolve()
    assert launch.stat().st_mode & 0o777 == 0o755
    if os.geteuid() == 0:  # (CI runs as root: it can give the folder away)
        os.chown(launch, 65534, 65534)
        with pytest.raises(ResbenchError, match=r"\.launch belongs to another user \(uid 65534\), who could plant links "
                                                r"where SLURM writes this sweep's output; use a --runs_dir of your own"):
            own_launch_folder(tmp_path / "runs")


def job_fields(slurm: Slurm, job: str) -> dict[str, str]:
    """`scontrol show job`'s fields of one job whose paths hold no space (`Key=Value` pairs)."""
    return dict(pair.split("=", 1) for pair in slurm.run("scontrol", "show", "job", job).split() if "=" in pair)


def test_a_slurm_task_never_writes_through_a_link_planted_after_submission(slurm, tmp_path):
    """Submitted on hold with an option full of shell and #SBATCH syntax: SLURM records the launcher's working
    folder and output whatever the user passed. Then a link planted as run 0's stdout.log and as run 1's folder,
    and the job released: each task refuses to write through it, says so in SLURM's own output, and starts nothing."""
    write_grid(tmp_path, [1, 2], 20)
    sweep(tmp_path, "--launcher", "slurm", "--slurm", "hold", "--slurm", "comment=x;y|z&$(w) #SBATCH", env=slurm.env)
    runs, launch = run_folders(tmp_path), tmp_path / "runs" / ".launch"
    job = json.loads((runs[0] / "launch.json").read_text())["job"].split("_")[0]
    fields = job_fields(slurm, f"{job}_0")
    assert fields["WorkDir"] == str(launch) and fields["StdOut"] == f"{launch}/{job}_0.out"
    assert fields["Comment"] == "x;y|z&$(w)" and fields["Command"] == str(launch / "job.sbatch")  # (split at spaces)
    victim, elsewhere = tmp_path / "victim.txt", tmp_path / "elsewhere"
    victim.write_text("the user's own file\n")
    (runs[0] / "stdout.log").symlink_to(victim)
    shutil.rmtree(runs[1])
    elsewhere.mkdir()
    runs[1].symlink_to(elsewhere)
    slurm.run("scontrol", "release", job)
    wait_for(lambda: slurm.queue() == [], LIMIT, "the tasks to end")
    first, second = ((launch / f"{job}_{i}.out").read_text() for i in (0, 1))
    assert "stdout.log (a symbolic link stands there; resbench never writes through one); the run was not started" in \
        first
    assert f"cannot write {runs[1].relative_to(tmp_path)} (a symbolic link stands there; resbench never writes through one)" in second
    assert victim.read_text() == "the user's own file\n" and list(elsewhere.iterdir()) == []
    assert not (runs[0] / "metrics.jsonl").exists()


def test_a_slurm_task_reads_its_plan_by_name_never_through_a_link(tmp_path, monkeypatch, capsys):
    """No engine needed: the task's argument is a plan's file name, never a path, and a plan replaced by a link
    (or damaged) is one line in SLURM's output; nothing is trained."""
    from resbench.sweep.slurm_task import main

    monkeypatch.setenv("SLURM_SUBMIT_DIR", str(tmp_path))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    (tmp_path / "elsewhere.json").write_text(json.dumps({"format": 1, "workdir": "/", "tasks": [
        {"save": str(tmp_path / "x" / "y"), "command": ["touch", str(tmp_path / "PWNED")]}]}))
    (tmp_path / "plan-0123456789abcdef.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "plan-ffffffffffffffff.json").write_text('{"format": 1, "tasks": [')
    for name, line in (("../elsewhere.json", "is not the name of a sweep's plan"),
                       ("plan-0123456789abcdef.json", "plan-0123456789abcdef.json (a symbolic link)"),
                       ("plan-ffffffffffffffff.json", "plan-ffffffffffffffff.json (Expecting value")):
        assert main([name]) == 2
        out = capsys.readouterr().out
        assert line in out and out.endswith("; the run was not started\n") and out.count("\n") == 1, out
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- Ray

def test_a_grid_finishes_on_a_ray_cluster(ray_cluster, tmp_path):
    while len(ray_cluster.workers) < 2:
        ray_cluster.add_worker()
    write_grid(tmp_path, [1, 2, 3, 4], 10)
    start = time.monotonic()
    out = sweep(tmp_path, "--launcher", "ray", "--address", ray_cluster.address, env=ray_cluster.env,
                new_process=True).stdout
    print(f"ray: 4 runs in {time.monotonic() - start:.1f} s")
    assert "sweep: 4 of 4 runs finished" in out
    assert all((run / "summary.json").is_file() for run in run_folders(tmp_path))


def test_a_run_on_a_lost_ray_node_is_retried_and_resumes_the_same(ray_cluster, tmp_path, uninterrupted):
    for port in list(ray_cluster.workers):
        ray_cluster.kill_worker(port)
    victim = ray_cluster.add_worker()  # the only node with a CPU: the run starts there
    write_grid(tmp_path, [LONG_SEED], LONG_NI)
    proc = subprocess.Popen([sys.executable, "-m", "resbench", "sweep", "--grid", "grid.toml", "--runs_dir", "runs",
                             "--launcher", "ray", "--address", ray_cluster.address, "--", *TINY], cwd=tmp_path,
                            env={**cli_env(), **ray_cluster.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for(lambda: (tmp_path / "runs" / "Digits_x32").is_dir() and records_written(run_folders(tmp_path)[0]) >= 2,
                 LIMIT, "two evaluations")
        ray_cluster.kill_worker(victim)
        ray_cluster.add_worker()  # where the retry can run
        out, _ = proc.communicate(timeout=LIMIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    [run] = run_folders(tmp_path)
    assert "resuming at iteration" in (run / "stdout.log").read_text()
    assert figures(run) == uninterrupted


def test_ray_bad_input_is_one_line(ray_cluster, tmp_path):
    write_grid(tmp_path, [1], 20)
    unreachable = sweep(tmp_path, "--launcher", "ray", "--address", "127.0.0.1:9", check=False, new_process=True)
    assert unreachable.returncode == 2
    assert unreachable.stderr.splitlines()[-1].startswith("error: cannot reach a Ray cluster at 127.0.0.1:9")
    gpus = sweep(tmp_path, "--launcher", "ray", "--address", ray_cluster.address, "--gpus_per_run", "2",
                 env=ray_cluster.env, check=False, new_process=True)
    assert gpus.returncode == 2 and gpus.stderr.splitlines()[-1] == (
        "error: each run asks for 2 GPUs (--gpus_per_run) but the largest node of the Ray cluster has 0; ask for fewer")
    wrong = sweep(tmp_path, "--launcher", "local", "--address", ray_cluster.address, check=False)
    assert wrong.returncode == 2 and "--address is a flag of --launcher ray, not of --launcher local" in wrong.stderr
    assert not (tmp_path / "runs" / "Digits_x32").exists() or not any(
        (run / "metrics.jsonl").exists() for run in run_folders(tmp_path))


def test_status_reads_every_state_from_the_folders(tmp_path):
    """No engine needed: the folders alone say finished, running, queued, stopped, failed and new."""
    write_grid(tmp_path, [1, 2, 3, 4, 5, 6], 20)
    plan = sweep(tmp_path, "--status").stdout.splitlines()
    assert plan[0] == "sweep status: 6 runs: 6 new"
    runs = [tmp_path / line.split()[1] for line in plan[1:]]
    record = {"iter": 10, "val_acc": 0.5, "trn_loss": 1.0}
    for run in runs[:5]:
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (runs[0] / "summary.json").write_text(json.dumps({
        "status": "finished", "data_name": "Digits_x32", "depth": 8, "width": 1, "precision": "fp32", "params": 1,
        "wall_seconds": 61.0, "config": None, "best_val_acc": 0.5, "tst_acc": 0.4, "tst_nll": 1.5, "best_iter": 10}))
    (runs[2] / ".lock").write_text("")  # running
    (runs[3] / "stdout.log").write_text("[iter 10] ...\nerror: cannot read the data\n")  # failed
    (runs[4] / "metrics.jsonl").unlink()
    (runs[4] / "launch.json").write_text(json.dumps({"launcher": "slurm", "job": "12_4", "submitted": "now"}))
    lines = sweep(tmp_path, "--status").stdout.splitlines()
    assert lines[0] == "sweep status: 6 runs: 1 finished, 1 running, 1 queued, 1 stopped, 1 failed, 1 new"
    assert [line.split()[0] for line in lines[1:]] == ["finished", "stopped", "running", "failed", "queued", "new"]
    assert lines[1].endswith("val/acc 0.5000, tst/acc 0.4000, tst/nll 1.5000 (best at iteration 10), 0:01:01")
    assert lines[2].endswith("at iteration 10 of 20; resumes when launched again (local)")
    assert "iteration 10 of 20, last written" in lines[3] and lines[4].endswith("error: cannot read the data")
    assert lines[5].endswith("submitted as slurm job 12_4") and lines[6].endswith("-s6")


def test_a_run_on_several_gpus_is_one_torchrun_per_task(tmp_path, monkeypatch):
    """No engine needed: what a multi-GPU grid submits (this machine has no GPUs to run it on). The task's command
    is the plan's data; the script and its arguments stay the same."""
    from resbench.sweep.plan import plan_run
    from resbench.sweep.slurm import job_plan, sbatch_argv, slurm_options

    monkeypatch.chdir(tmp_path)
    run = plan_run(Path("runs"), ["--data_name", "Digits_x32", "--resnet_depth", "8"], processes=4)
    name, plan = job_plan([run])
    argv = sbatch_argv([run], slurm_options(["partition=gpu", "cpus_per_task=16"]), tmp_path / ".launch", name, 4)
    assert {"--gres=gpu:4", "--partition=gpu", "--cpus-per-task=16"} <= set(argv)
    [task] = json.loads(plan)["tasks"]
    assert " -P -m torch.distributed.run --standalone --nproc_per_node 4 -m resbench train " in shlex.join(task["command"])
    assert json.loads(plan)["workdir"] == str(tmp_path)
    single = plan_run(Path("runs"), ["--data_name", "Digits_x32", "--resnet_depth", "8"])
    one_gpu = sbatch_argv([single], {}, tmp_path / ".launch", job_plan([single])[0], 1)
    assert [arg for arg in one_gpu if not arg.startswith(("--gres", "plan-"))] == \
        [arg for arg in argv if not arg.startswith(("--gres", "--partition", "--cpus-per-task", "plan-"))]
    given = sbatch_argv([run], slurm_options(["gres=gpu:a100:4"]), tmp_path / ".launch", name, 4)
    assert "--gres=gpu:a100:4" in given and "--gres=gpu:4" not in given


def test_a_ray_task_that_waits_for_an_earlier_attempt_says_so_and_trains(tmp_path, monkeypatch, capsys):
    """No engine needed: the task's lock found held (a lost node's trainer still saving), it says whom it waits
    for, then runs its command into the run folder's stdout.log."""
    from resbench.sweep import ray_cluster

    take_lock = ray_cluster.take_lock
    monkeypatch.setattr(ray_cluster, "take_lock", lambda path, on_wait: (on_wait(), take_lock(path))[1])
    code = ray_cluster.train_task([sys.executable, "-c", "print('trained')"], "runs/Digits_x32/run", str(tmp_path))
    run = tmp_path / "runs" / "Digits_x32" / "run"
    assert code == 0 and (run / "stdout.log").read_text() == "trained\n"
    assert capsys.readouterr().err == f"waiting for {run}'s earlier attempt to stop\n"


def test_ray_from_a_folder_whose_path_is_not_utf8_is_named_as_the_cause(tmp_path, monkeypatch):
    """Ray sends the driver's sys.path (the current folder first) as UTF-8: from a folder whose name has
    other bytes its init fails with a bare UnicodeEncodeError (seen with Ray 2.60); the line must say why."""
    from resbench.sweep import ray_cluster

    def init(**kwargs):
        os.getcwd().encode()

    folder = tmp_path / os.fsdecode(b"runs\xff")
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setattr(ray_cluster, "import_ray", lambda: types.SimpleNamespace(init=init))
    with pytest.raises(ResbenchError, match=r"Ray cannot run a sweep from .*/runs\\udcff: the folder's path is not "
                                            "UTF-8; run it from another folder"):
        ray_cluster.run_on_ray([], None, 1, 0)


def test_a_slurm_task_of_a_two_process_run_is_one_torchrun_and_finishes(slurm, tmp_path):
    """`--gpus_per_run 2` with `--device cpu`: sbatch's command line (shown by --dry_run) asks for no GPU, and the
    task's command in the plan it names is a torchrun of 2 CPU processes (gloo), run as the task's job step on the
    single-node SLURM; the job script is the one constant text."""
    from resbench.sweep.slurm import JOB_SCRIPT

    write_grid(tmp_path, [1], 4)
    argv = ["sweep", "--grid", "grid.toml", "--runs_dir", "runs", "--launcher", "slurm", "--gpus_per_run", "2"]
    train = ["--", *TINY, "--device", "cpu"]
    dry = resbench_in_process(*argv, "--dry_run", *train, cwd=tmp_path, env={**cli_env(), **slurm.env},
                              check=True).stdout
    sbatch, script = dry_run_submission(dry)
    assert "--gres" not in sbatch and script == JOB_SCRIPT and "[2 processes (torchrun)]" in dry
    resbench_in_process(*argv, *train, cwd=tmp_path, env={**cli_env(), **slurm.env}, check=True)
    [plan] = (tmp_path / "runs" / ".launch").glob("plan-*.json")
    assert sbatch.endswith(" " + plan.name)  # the plan the dry run named
    [task] = json.loads(plan.read_text())["tasks"]
    assert " -m torch.distributed.run --standalone --nproc_per_node 2 -m resbench train " in shlex.join(task["command"])
    [run] = run_folders(tmp_path)
    wait_for(lambda: (run / "summary.json").is_file(), LIMIT, "the two-process task")
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    wait_for(lambda: slurm.queue() == [], LIMIT, "the task to end")
