"""Files the tool creates, made so that they never follow a planted link and never leave half a file;
and the small files it reads (settings, grids, a run's JSON files), read with a bound.

Light (no torch), so that every module can use it. A file written whole goes to a new temporary
file beside it (created exclusively: `mkstemp`), flushed to disk and renamed into place; a file
written in place (a log, a lock file, a download's `.part`) is opened without following a symbolic
link and refused if it has other hard links or is not a regular file. A killed process leaves its
temporary files; whoever next holds the lock they were written under removes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable


class UnsafeFileError(OSError):
    """A file the tool would write in place is a symbolic link, a hard link or not a regular file."""


NO_LINKS = "a symbolic link stands there; resbench never writes through one"


def open_own_file(path: str | Path, append: bool = False) -> IO[bytes]:
    """Open `path` for writing (created if missing, truncated unless `append`) without following a
    symbolic link planted there, and refuse a file with other hard links or a non-regular file:
    the write must land in a file of the tool's own, never in a file the link points to."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(exc.errno, NO_LINKS, str(path)) from None
        raise
    try:
        check_own_file(os.fstat(fd), path)
        if not append:
            os.ftruncate(fd, 0)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def check_own_file(info: os.stat_result, path: str | Path) -> None:
    """Refuse a file that is not a regular file of its own: its writes would land elsewhere."""
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFileError(errno.ELOOP, NO_LINKS, str(path))
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(errno.EPERM, "it is not a regular file", str(path))
    if info.st_nlink > 1:
        raise UnsafeFileError(errno.EPERM, "it has other hard links; resbench never writes through one", str(path))


def check_writable_in_place(path: str | Path) -> None:
    """Refuse now, where `open_own_file` would refuse `path` later: before a scheduler is handed a job
    that will write it. A missing file is fine (it will be created); a folder that cannot hold it is the
    run's own failure, reported when its turn comes."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    check_own_file(info, path)


def own_folder(named: str | Path, below: str | Path = "", create: bool = True) -> Path:
    """`named / below`: the folder a user named (any folder, a link to another disk too), and below it
    each folder the tool derived itself (`<data_name>/<run>`, `plots`, a dataset's `<NAME>`), created
    if missing (unless not `create`) and checked with lstat, level by level: a symbolic link planted at
    any of those levels is refused (UnsafeFileError naming it), since what the tool writes there would
    land wherever it leads; so is a file standing where a folder goes. Not `create`: a missing level
    ends the check (nothing is there to refuse)."""
    path = Path(named)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    for part in Path(below).parts:
        path = path / part
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if create:
                raise
            break
        if stat.S_ISLNK(mode):
            raise UnsafeFileError(errno.ELOOP, NO_LINKS, str(path))
        if not stat.S_ISDIR(mode):
            raise UnsafeFileError(errno.ENOTDIR, "a file stands there, where resbench makes a folder", str(path))
    return Path(named) / below


def open_lock_file(path: str | Path) -> int:
    """A descriptor of the lock file `path`, created if missing; a symbolic link there is refused."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(exc.errno, NO_LINKS, str(path)) from None
        raise


def open_regular(path: str | Path, follow_links: bool = True) -> IO[bytes]:
    """`path` opened for reading if it is a regular file; OSError otherwise (and, not `follow_links`, for a
    symbolic link: ELOOP). Opened without blocking, so that a FIFO planted there (or put in place of a
    file after it was listed) is refused, not waited on forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "it is not a regular file (a device, FIFO or socket)", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | Path, limit: int, follow_links: bool = True) -> bytes:
    """The bytes of the regular file `path` (`open_regular`); OSError if it holds more than `limit` bytes.

    A FIFO would block the reader forever and /dev/zero never end (a planted link may lead to
    either), and a huge file would be read whole into memory before anything could refuse it.
    """
    with open_regular(path, follow_links) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"it is larger than {limit:,} bytes, more than resbench reads", str(path))
    return data


TEMPORARY_SUFFIX = ".tmp"
RANDOM_PART = "[a-z0-9_]{8}"  # the random part of a name mkstemp or mkdtemp makes (tempfile's own alphabet)
# In every temporary folder the tool makes (`temporary_folder`), from its first instant until it is renamed
# into place: what allows a later process to remove a folder a killed one left, never one a user named alike.
TEMPORARY_MARK = ".resbench-temporary"


def temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> list[str]:
    """Delete the temporary files that an interrupted `atomic_write` of one of `names` left in `folder`.

    Only call this while holding the lock under which those files are written: then no live
    process can be writing them, and every one found is a leftover of a killed process.
    """
    prefixes = "|".join(re.escape(temporary_prefix(Path(name))) for name in names)
    return remove_stale(folder, re.compile(f"(?:{prefixes}){RANDOM_PART}{re.escape(TEMPORARY_SUFFIX)}"))


def temporary_folder(parent: Path, prefix: str) -> Path:
    """A new folder `<prefix>XXXXXXXX` in `parent` (mkdtemp: never one that was there), readable as the
    umask says, holding TEMPORARY_MARK; `unmark` it before renaming it into place."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        folder.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide a shared data root's files
        os.close(os.open(folder / TEMPORARY_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def unmark(folder: Path) -> None:
    os.unlink(folder / TEMPORARY_MARK)


def is_marked(folder: str | Path, mark: str = TEMPORARY_MARK) -> bool:
    """Whether `folder` holds the regular file `mark` (not through a link)."""
    try:
        return stat.S_ISREG(os.lstat(Path(folder) / mark).st_mode)
    except OSError:
        return False


def remove_stale(folder: Path, pattern: re.Pattern[str], folders: bool = False,
                 owned: Callable[[str], bool] = is_marked) -> list[str]:
    """Delete the entries of `folder` whose whole name matches `pattern`: files, or with `folders`,
    folders the tool marked as its own (`owned(path)`, by default TEMPORARY_MARK) and what they hold; a
    link is never followed nor removed. Call it holding the lock that the matching files or folders
    are made under, so that none of them belongs to a live process."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not pattern.fullmatch(entry.name):
                continue
            if folders and entry.is_dir(follow_symlinks=False):
                if not owned(entry.path):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
            elif not folders and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            else:
                continue
            removed.append(entry.name)
    return removed


def take_lock(path: Path, on_wait: Callable[[], None] | None = None) -> int:
    """A descriptor holding the exclusive flock of the lock file `path` (created if missing, never
    through a link). Held by another process: BlockingIOError, or, given `on_wait`, that is called
    once and the lock waited for.

    A holder removes the file before it releases the lock (`drop_lock_file`), so a lock taken on a
    file that has meanwhile been removed is no lock: it is dropped and the path opened afresh."""
    waited = False
    while True:
        fd = open_lock_file(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is None:
                    raise
                if not waited:
                    on_wait()
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if is_still_at(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def drop_lock_file(path: Path, fd: int) -> None:
    """Remove the lock file `path` if it is still the one `fd` locks (the caller then closes `fd`,
    releasing the lock): a process that opened the file meanwhile finds, once it holds the lock,
    that the name no longer leads to it, and starts over (`take_lock`)."""
    with contextlib.suppress(OSError):
        if is_still_at(fd, path):
            os.unlink(path)


def is_still_at(fd: int, path: Path) -> bool:
    """Whether `fd` is the file now at `path`, not one that was removed (or replaced) since."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def replace_atomically(path: Path, write: Any) -> None:
    """`atomic_write` that lets the OSError through, for a caller that names the file itself."""
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide runs from co-workers
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
