"""The printing rule (issue 37): every command that prints text from a file or a folder name, run against a
folder of crafted names and files, sends no control byte to the terminal and forges no line."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import resbench_in_process
from resbench.cli.main import main
from resbench.console import progress

# Terminal controls (OSC title, clear screen, CSI as C1, DEL, NEL, the line separator), a carriage return, and a
# newline followed by a line that must never stand on its own.
PAYLOAD = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\x85\u2028\rX\nFORGED | 1 | 2 |"
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # C0 but the tool's own line breaks, DEL, C1
TINY = ["--resnet_depth", "8", "--batch_size", "16", "--optim_ni", "4", "--eval_every", "2", "--threads", "1",
        "--compile", "false"]
GRID = f'data_name = ["Digits_x32"]\nseed = [1, 2, 3, 4]\n[flags]\nmirror = {json.dumps(PAYLOAD)}\n' + "".join(
    f"{TINY[i][2:]} = {TINY[i + 1] if TINY[i + 1].isdigit() else json.dumps(TINY[i + 1])}\n" for i in range(0, 10, 2))


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    """A sweep's folder: a grid, its four runs (one trained, three copies) with crafted files, run folders named
    with the payload (one sound, one damaged), an image tree with crafted class and file names, and a data root
    holding an imported set whose dataset.json names a crafted source."""
    folder = tmp_path_factory.mktemp("crafted")
    (folder / "grid.toml").write_text(GRID)
    runs = folder / "runs" / "Digits_x32"
    first = runs / "R8x1-b16-i4-lr0.1-wd0.001-s1"
    resbench_in_process("train", "--data_name", "Digits_x32", "--seed", "1", *TINY, "--save", first, check=True)
    second, third, fourth = (runs / f"R8x1-b16-i4-lr0.1-wd0.001-s{seed}" for seed in (2, 3, 4))
    for copy in (second, third, fourth, runs / PAYLOAD, runs / f"damaged {PAYLOAD}"):
        shutil.copytree(first, copy)
    for run in (first, second, third, fourth, runs / f"damaged {PAYLOAD}"):  # eval scores one, names the others
        (run / "best.pt").unlink()
    edit_json(first / "summary.json", status=PAYLOAD, precision=PAYLOAD)
    summary = json.loads((first / "summary.json").read_text())
    edit_json(fourth / "summary.json", best_iter=PAYLOAD, data_name=PAYLOAD,
              config={**summary["config"], PAYLOAD: PAYLOAD})
    (second / "summary.json").unlink()
    (second / "stdout.log").write_text(f"[iter 2]\nerror: {PAYLOAD}\n")
    (third / "summary.json").unlink()
    (third / "metrics.jsonl").unlink()
    (third / "launch.json").write_text(json.dumps({"launcher": PAYLOAD, "job": PAYLOAD}))
    (runs / f"damaged {PAYLOAD}" / "metrics.jsonl").write_text(f"{{\"iter\": \"{PAYLOAD[:3]}\"}}\n")
    (runs / f"damaged {PAYLOAD}" / "summary.json").write_text("[")
    src = folder / "src"
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    for name, count in (("a", 6), ("b", 6), (PAYLOAD, 1)):
        (src / "train" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(pixels).save(src / "train" / name / f"{i}.png")
    (src / "train" / "a" / f"{PAYLOAD}.png").write_bytes(b"no image")  # unreadable: --skip_bad names it
    (src / PAYLOAD).mkdir()  # a folder beside train/: ignored, and named in a note
    return folder


def assert_clean(proc, *expected: str) -> None:
    """No control byte but the tool's own line breaks on stdout or stderr; the payload's newline escaped, so no
    line of it stands alone; and the command said what it is for (`expected`)."""
    for text in (proc.stdout, proc.stderr):
        assert not CONTROL.search(text), (proc.args, CONTROL.search(text), text[-2000:])
        assert re.findall(r"(?<!\\n)FORGED", text) == [], (proc.args, text[-2000:])
    for part in expected:
        assert part in proc.stdout + proc.stderr, (proc.args, part, proc.stdout[-2000:], proc.stderr[-2000:])


def test_every_command_prints_crafted_names_and_files_as_data(crafted):
    """table, compare, plot, eval RUNS_DIR, train, sweep --status and --dry_run, data import, data list and export
    (its model card too)."""
    def command(*args: object, cwd: Path = crafted):
        return resbench_in_process(*args, cwd=cwd)

    assert_clean(command("table", "runs"), "### Digits_x32", "\\nFORGED", "skipping damaged run folder")
    assert_clean(command("table", "runs", "--selection", "all"), "| selection |")
    assert_clean(command("compare", "runs"), "### No reference run", "\\nFORGED")
    assert_clean(command("plot", "runs", "--out", crafted / "plots"), "Digits_x32_curves.png")
    assert_clean(command("eval", "runs"), "\\nFORGED | 1 | 2 |: acc ", "warning: cannot evaluate runs/Digits_x32/damaged")
    assert_clean(command("train", "--resume", "runs/Digits_x32/R8x1-b16-i4-lr0.1-wd0.001-s1"), "already holds a ")
    sweep = ["sweep", "--grid", "grid.toml", "--runs_dir", "runs"]
    assert_clean(command(*sweep, "--status"), "failed   runs/", "queued   runs/", "summary.json says ")
    assert_clean(command(*sweep, "--dry_run"), "--mirror ")
    assert_clean(command(*sweep, "--dry_run", "--launcher", "slurm"), "sbatch would run")
    assert_clean(command("data", "import", "Set", "src", "--data_root", "data", "--skip_bad", "--workers", "1"),
                 "note: 2 classes in no validation image (\\x1b]0;pwned", "ignored src/\\x1b", "(--skip_bad; e.g. /")
    edit_json(crafted / "data" / "Set" / "dataset.json", source=PAYLOAD)
    (crafted / "data" / "Other").mkdir()
    (crafted / "data" / "Other" / "dataset.json").write_text(json.dumps({"format": 1, "source": PAYLOAD}))
    assert_clean(command("data", "list", "--data_root", "data"), "imported from \\x1b]0;pwned", "it lacks classes")
    edit_json(crafted / "runs" / "Digits_x32" / PAYLOAD / "summary.json", device=PAYLOAD)
    exported = command("export", "--sweep", "runs", "exported")  # (its folder names are made plain file names)
    [card] = (crafted / "exported").glob("*/README.md")  # the model card quotes summary.json's device
    assert "1 run exported" in exported.stderr and "warning: not exporting runs/" in exported.stderr
    assert "device: \\x1b]0;pwned" in card.read_text()
    for text in (exported.stdout, exported.stderr, card.read_text()):
        assert not CONTROL.search(text) and not re.search("^FORGED", text, re.MULTILINE), text[-2000:]


def test_a_name_that_is_not_utf8_prints_escaped_on_a_strict_stdout(tmp_path, monkeypatch):
    """PYTHONIOENCODING=utf-8 (or a UTF-8 locale) makes stdout strict: a folder name that is not
    UTF-8 must not end the command with a UnicodeEncodeError."""
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", strict)
    assert main(["data", "list", "--data_root", str(tmp_path / os.fsdecode(b"data\xff"))]) == 0
    strict.flush()
    assert b"data\\udcff" in strict.buffer.getvalue()


def test_a_progress_bar_on_a_terminal_shows_its_description_as_data(monkeypatch):
    """The bars (downloads, decoding, evaluation sets) are drawn by tqdm only on a terminal, where the tests
    above do not look: a description from a file or folder name must reach it escaped too."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress(2, f"decoding {PAYLOAD}", unit="img") as bar:
        bar.update(2)
    drawn = sys.stderr.getvalue()
    assert "decoding \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\x85\\u2028\\rX\\nFORGED" in drawn
    assert "\x1b]0;pwned" not in drawn and "\nFORGED" not in drawn and "\x9b" not in drawn
