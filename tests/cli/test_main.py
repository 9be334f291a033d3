"""The command line's entry (cli/main.py, __main__.py): help without torch, one line for any error, Ctrl-C
and SIGTERM at any moment, closed or cut-short standard streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import LIMIT, REPO, cli_env, wait_until
from resbench.cli.main import main

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


INTERRUPTED_IMPORT = '''
import importlib.abc, pathlib, sys, time

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            pathlib.Path({marker!r}).touch()
            time.sleep({limit})
        return None

sys.meta_path.insert(0, Block())
'''


@pytest.mark.parametrize("entry", ["python -m", "console script", "seed script"])
def test_ctrl_c_while_importing_is_one_line(tmp_path, entry):
    """The import of torch is held (a sitecustomize that waits) until SIGINT arrives."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    marker = tmp_path / "importing"
    (hooks / "sitecustomize.py").write_text(INTERRUPTED_IMPORT.format(marker=str(marker), limit=LIMIT))
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])
    start = {"python -m": [sys.executable, "-m", "resbench"],
             "console script": [sys.executable, "-c", "import sys; from resbench.__main__ import run; sys.exit(run())"],
             "seed script": [sys.executable, str(REPO / "scripts_cifar" / "SGDM.py")]}[entry]
    # The seed script is `resbench train`: a run that imports torch once its flags are read.
    args = ["--data_root", str(tmp_path / "data"), "--save", str(tmp_path / "run")] if entry == "seed script" \
        else ["data", "list"]
    proc = subprocess.Popen([*start, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until(marker.exists, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130 and err == "interrupted\n", err


CLOSED_STREAMS = """
import os, sys
os.close(0); os.close(1)
script = os.open(sys.argv[1], os.O_RDONLY)
os.dup2(script, 2)  # stderr left on a file open for reading, as pyenv's shim does
os.close(script)
from resbench.__main__ import open_closed_standard_streams
open_closed_standard_streams()
print("to stderr", file=sys.stderr, flush=True); print("to stdout", flush=True)
opened = os.open(sys.argv[1], os.O_RDONLY)
assert opened > 2, opened
assert all(os.path.samestat(os.fstat(fd), os.stat(os.devnull)) for fd in (0, 1, 2))
"""


def test_closed_standard_streams_become_dev_null(tmp_path):
    """`resbench train ... <&- >&- 2>&-`: a print must not fail with EBADF mid-run, and no file the run
    opens may take descriptor 0, 1 or 2 (where a library's message would land in it)."""
    script = tmp_path / "script"
    script.write_text("")
    proc = subprocess.run([sys.executable, "-c", CLOSED_STREAMS, str(script)], env=cli_env(), timeout=LIMIT)
    assert proc.returncode == 0 and script.read_text() == ""


def test_a_deleted_current_folder_is_one_line_before_torch_is_imported(tmp_path):
    """`cd dir; rmdir ../dir; resbench train ...` ended in oneMKL's "Cannot load libtorch_cpu.so"."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
            "from resbench.__main__ import run; sys.exit(run(['train']))")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=LIMIT)
    assert (proc.returncode, proc.stderr) == (2, "error: the current folder cannot be used (No such file or "
                                                 "directory: deleted?); cd into an existing folder and run the "
                                                 "command again\n")


def test_the_console_script_is_the_light_entry_point():
    assert 'resbench = "resbench.__main__:run"' in (REPO / "pyproject.toml").read_text()


def test_sigterm_outside_the_loop_unwinds_like_ctrl_c(tmp_path):
    """Before the loop takes over the signals (data preparation), SIGTERM must unwind, so the
    cleanup of a just-created run folder and of lock files runs, instead of killing at once."""
    from resbench.cli.main import stop_on_sigterm
    main(["data", "list", "--data_root", str(tmp_path)])
    assert signal.getsignal(signal.SIGTERM) is stop_on_sigterm
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("command", [["train", "--resume", "{long}"], ["eval", "--ckpt", "{long}/best.pt"],
                                     ["data", "list", "--data_root", "{long}"], ["table", "{long}"]])
def test_any_path_too_long_is_one_clear_line(tmp_path, capsys, command):
    long = str(tmp_path / ("a" * 300))
    assert main([part.format(long=long) for part in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot use {long}") and err.endswith("(File name too long); check the path you passed\n")
