"""files.py's contracts: the lock a run folder or a dataset is held by, and a file written in place never
through a link or into a special file."""

from __future__ import annotations

import os

import pytest

from resbench import files


def test_a_finished_lock_does_not_remove_the_next_holders_lock(tmp_path):
    from resbench.runs.folder import RunFolder
    from resbench.runs.schema import LOCK as LOCK_NAME

    first = RunFolder(tmp_path / "run")
    with first.claimed():
        (tmp_path / "run" / LOCK_NAME).unlink()  # as if it ended, and another run took the folder
        second = RunFolder(tmp_path / "run").lock()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the first run's end left the second's lock alone
    second.close()


def test_files_written_in_place_refuse_links_and_special_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (tmp_path / "symlink").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "created-outside")
    os.link(victim, tmp_path / "hardlink")
    os.mkfifo(tmp_path / "fifo")
    for name in ("symlink", "dangling", "hardlink", "fifo"):  # a fifo without a reader: refused, not waited on
        for append in (False, True):
            with pytest.raises(files.UnsafeFileError if name != "fifo" else OSError):
                files.open_own_file(tmp_path / name, append=append)
    assert victim.read_text() == "mine" and not (tmp_path / "created-outside").exists()
