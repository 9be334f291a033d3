"""Shared test helpers: run the command line of *this* checkout in a subprocess or in this process; the
tiny run's settings, and the run folders several test files read (an unfinished run, a sweep's two runs)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resbench.settings.config import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = SRC.parent
# The longest a subprocess or a wait may take before a test fails: a limit for a machine busy with
# other work (load 10 on 2 cores makes a 30-second run take many minutes), never an expectation.
# Tests wait for events (a file appearing, a line printed), each at most this long.
LIMIT = 3600


def wait_until(condition, proc: subprocess.Popen | None = None, limit: float = LIMIT) -> None:
    """Poll until `condition()` holds; fail if `proc` ends first or after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert proc is None or proc.poll() is None, f"the process ended early:\n{proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


class Blocked(BaseException):
    """What `fails_if_blocked` raises: no Exception, so that the code under test cannot take it for one of
    its own failures (a TimeoutError is an OSError) and block again further on."""


@contextlib.contextmanager
def fails_if_blocked(seconds: int, what: str):
    """Raise Blocked in the block after `seconds` (SIGALRM): a read that would block forever
    (a FIFO) or run for hours fails its test instead of hanging the suite."""
    def blocked(signum, frame):
        raise Blocked(what)

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli_env() -> dict[str, str]:
    """Environment in which `python -m resbench` imports this checkout, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    try:
        children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        children = []
    return [pid] + [p for child in children for p in process_tree(int(child))]


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie that no one reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def run_cli():
    """Run `python -m resbench ARGS...`; returns the CompletedProcess (text mode)."""

    def run(*args: str, cwd: Path | None = None, timeout: float = LIMIT, check: bool = False):
        proc = subprocess.run(
            [sys.executable, "-m", "resbench", *map(str, args)],
            cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"resbench {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """os.environ is `env` inside the block (what child processes, sbatch's among them, inherit)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def resbench_in_process(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
                        check: bool = False) -> subprocess.CompletedProcess:
    """`resbench ARGS...` run in this process, in `cwd` with `env` (default: cli_env()): run_cli's
    CompletedProcess without the seconds a new process spends importing torch. For what a command does;
    run_cli for what its process does (exit on a signal, closed streams, the folder it starts in)."""
    import torch

    from resbench.cli.main import main

    argv, out, err, threads = [str(arg) for arg in args], io.StringIO(), io.StringIO(), torch.get_num_threads()
    with environment(env or cli_env()), contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's errors (2), --help and --version (0)
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        finally:
            torch.set_num_threads(threads)  # a --threads flag must not slow the tests after it
    proc = subprocess.CompletedProcess(["resbench", *argv], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"resbench {' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    """resbench_in_process, as a fixture beside run_cli."""
    return resbench_in_process


def tiny(folder: Path, **changes: object) -> TrainConfig:
    """The settings of a run of a few seconds on the demo set, in `folder`."""
    settings = dict(data_name="Digits_x32", resnet_depth=8, batch_size=16, optim_ni=6, eval_every=3,
                    device="cpu", save=str(folder))
    return TrainConfig(**{**settings, **changes})


@pytest.fixture
def unfinished_run(tmp_path) -> TrainConfig:
    """A run folder with a last.pt at the final iteration but no summary.json (as if killed at the end)."""
    from resbench.train.loop import train

    cfg = tiny(tmp_path / "run")
    train(cfg)
    (tmp_path / "run" / "summary.json").unlink()
    return cfg


# A sweep grid of two short runs of the demo set (seeds 1 and 2).
DIGITS_GRID = """\
data_name = ["Digits_x32"]
resnet_depth = [8]
seed = [1, 2]

[flags]
optim_ni = 10
eval_every = 5
batch_size = 32
device = "cpu"
"""


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory) -> Path:
    """Two short real Digits_x32 runs (seeds 1 and 2) trained by a `--jobs 2` sweep; read, never changed, by the
    tests of table, plot, eval and sweep, so that the sweep trains once in a session."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "grid.toml").write_text(DIGITS_GRID)
    from resbench.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["sweep", "--grid", str(root / "grid.toml"), "--runs_dir", str(root / "runs"), "--jobs", "2"]) == 0
    assert "sweep: 2 of 2 runs finished" in out.getvalue()
    return root / "runs"
