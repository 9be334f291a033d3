"""Shared test helpers: run the command line of *this* checkout in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = SRC.parent


def cli_env() -> dict[str, str]:
    """Environment in which `python -m resbench` imports this checkout, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


@pytest.fixture
def run_cli():
    """Run `python -m resbench ARGS...`; returns the CompletedProcess (text mode)."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 600, check: bool = False):
        proc = subprocess.run(
            [sys.executable, "-m", "resbench", *map(str, args)],
            cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"resbench {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
