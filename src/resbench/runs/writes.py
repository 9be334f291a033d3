"""Crash-safe writes of a run folder's files: every write goes to a temporary file, is flushed to
disk, then renamed, so that a crash at any instant leaves either the previous file or the new one,
never half of one; a failed write (full disk, no permission) becomes one RunFolderError naming the
file and what to do.

Files the tool creates never follow a planted link: temporary files are created exclusively
(`mkstemp`), and files opened in place (logs) refuse a symbolic link or a file with other hard
links (`files.open_own_file`). Light (no torch): checkpoints are `runs.checkpoint`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Iterator

from resbench.files import UnsafeFileError, open_own_file, replace_atomically
from resbench.runs.schema import RunFolderError


@contextlib.contextmanager
def write_errors_named(path: str | Path, replaces: bool = False) -> Iterator[None]:
    """Turn an OSError while writing into `path` into one RunFolderError that says what to do.

    `replaces`: the write goes to a temporary file renamed over `path`, so `path` is left as it was.
    """
    path = Path(path)
    existed = replaces and os.path.isfile(path)  # os.path: no OSError for a name too long
    try:
        yield
    except OSError as exc:
        raise RunFolderError(write_error_message(path, exc, kept=existed)) from None


def write_error_message(path: Path, exc: OSError, kept: bool = False) -> str:
    if isinstance(exc, UnsafeFileError):
        path = Path(exc.filename or path)  # the link or file itself, maybe a level above the file written
        fix = "remove it, or use another --save folder"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk or use another --save folder"
        if kept:
            fix += f"; the previous {path.name} is intact"
    elif exc.errno == errno.ENAMETOOLONG:
        fix = "use a shorter --save folder name"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make that folder writable or use another --save folder"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
        fix = "a file stands where a folder is needed: --save must name a folder"
    else:
        fix = "use another --save folder"
    return f"cannot write {path} ({exc.strerror or exc}); {fix}"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, and rename it into place."""
    with write_errors_named(path, replaces=True):
        replace_atomically(Path(path), write)


def append_text(path: str | Path, text: str) -> None:
    """Append to a log file; lines are appended, so a crash loses at most the last one."""
    with write_errors_named(path), open_own_file(path, append=True) as f:
        f.write(file_bytes(text))


def file_bytes(text: str) -> bytes:
    """UTF-8, with a path's undecodable bytes (a non-UTF-8 --save name, held as surrogates) written back
    as the bytes they were, as `os.fsencode` does: the log names the folder the file system holds."""
    return text.encode("utf-8", "surrogateescape")


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(file_bytes(text)))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
