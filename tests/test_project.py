"""The project's own setup (pyproject.toml): what the README's test command shows while the suite runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import LIMIT, REPO


def test_pytest_q_names_each_file_as_it_runs_and_the_slowest_tests_at_the_end(tmp_path):
    """`python -m pytest -q` printed bare dots: minutes at 59% without a word of which test ran (issue 39)."""
    (tmp_path / "test_one_file.py").write_text("def test_a():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_one_file.py ." in proc.stdout and "slowest 15 durations" in proc.stdout
