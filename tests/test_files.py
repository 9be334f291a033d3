"""files.py's contracts: the lock a run folder or a dataset is held by."""

from __future__ import annotations


def test_a_finished_lock_does_not_remove_the_next_holders_lock(tmp_path):
    from resbench.runs.folder import RunFolder
    from resbench.runs.schema import LOCK as LOCK_NAME

    first = RunFolder(tmp_path / "run")
    with first.claimed():
        (tmp_path / "run" / LOCK_NAME).unlink()  # as if it ended, and another run took the folder
        second = RunFolder(tmp_path / "run").lock()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the first run's end left the second's lock alone
    second.close()
