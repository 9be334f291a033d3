"""Reading official archives safely: every member of a .tar(.gz) or .zip is checked before use.

Archive members with absolute paths, ``..`` components, or links pointing outside are refused,
so a tampered archive fails early with a clear error and nothing is written outside its target.
What an archive may unpack to is bounded by its size (`MAX_EXPANSION`), so a decompression bomb
(gigabytes of zeros in a small .tar.gz or .zip) is refused from its headers, before any of it is
unpacked.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from resbench.errors import DataError
from resbench.files import RANDOM_PART, remove_stale, temporary_folder

# Bounds on what an archive may unpack to, from its size on disk. Images and pickled arrays barely
# compress (the official archives unpack to 1.0-1.1 times their size); a bomb unpacks to ~1000.
MAX_EXPANSION = 16  # unpacked bytes per archive byte, beyond the allowance below
EXPANSION_ALLOWANCE = 64 * 2**20  # small archives (label files, tests) may compress better
MIN_BYTES_PER_MEMBER = 256  # a member costs at least a 512-byte tar header or ~80 bytes of zip records
MEMBER_ALLOWANCE = 10_000



@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "other"
    link: str = ""


def _escapes_root(path: str) -> bool:
    """Whether a normalised relative path would leave the archive root (or is absolute)."""
    norm = posixpath.normpath(path.replace("\\", "/"))
    return posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or norm[1:2] == ":"


def _member_problem(member: _Member) -> str | None:
    """Why extracting this member could write outside the target, or None if it is safe."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or name[1:2] == ":":
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in path"
    if member.kind == "symlink" and _escapes_root(posixpath.join(posixpath.dirname(name), member.link)):
        return f"symlink to {member.link!r} points outside the archive"
    if member.kind == "hardlink" and _escapes_root(member.link):
        return f"hard link to {member.link!r} points outside the archive"
    return None


def unpack_budget(archive_bytes: int) -> tuple[int, int]:
    """(bytes, members) an archive of this size may unpack to."""
    return (MAX_EXPANSION * archive_bytes + EXPANSION_ALLOWANCE,
            archive_bytes // MIN_BYTES_PER_MEMBER + MEMBER_ALLOWANCE)


DOWNLOAD_AGAIN = "delete it and download again"


def _bomb_error(name: str, what: str, fix: str = DOWNLOAD_AGAIN) -> DataError:
    return DataError(f"refusing archive {name}: it would unpack to {what}, more than an archive of its size "
                     f"holds (a decompression bomb?); {fix}")


def _tar_infos(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """Every member header, read one at a time so that a bomb is refused at its first oversized member
    (a member's data is skipped only once its header has been checked)."""
    max_bytes, max_members = unpack_budget(path.stat().st_size)
    unpacked = 0
    for count, info in enumerate(iter(tar.next, None), 1):
        unpacked += info.size if info.isfile() else 0
        if unpacked > max_bytes:
            raise _bomb_error(path.name, f"more than {unpacked:,} bytes")
        if count > max_members:
            raise _bomb_error(path.name, f"more than {max_members:,} members")
    return tar.getmembers()


def check_zip_size(archive: zipfile.ZipFile, archive_bytes: int, name: str, fix: str = DOWNLOAD_AGAIN) -> None:
    """zipfile reads a member up to its declared size; the declared sizes are bounded here, before any
    member is read (a zip of `archive_bytes` named `name`: a file, or a zip inside one, as an .npz member
    is; an .npz is a zip too)."""
    max_bytes, max_members = unpack_budget(archive_bytes)
    infos = archive.infolist()
    unpacked = sum(info.file_size for info in infos)
    if unpacked > max_bytes or len(infos) > max_members:
        raise _bomb_error(name, f"{unpacked:,} bytes in {len(infos):,} members", fix)


def _tar_members(infos: list[tarfile.TarInfo]) -> list[_Member]:
    def kind(info: tarfile.TarInfo) -> str:
        if info.isfile():
            return "file"
        if info.isdir():
            return "dir"
        if info.issym():
            return "symlink"
        return "hardlink" if info.islnk() else "other"

    return [_Member(info.name, kind(info), info.linkname) for info in infos]


def _zip_members(archive: zipfile.ZipFile) -> list[_Member]:
    def member(info: zipfile.ZipInfo) -> _Member:
        mode = info.external_attr >> 16
        if (mode & 0o170000) == 0o120000:  # S_IFLNK: the entry's content is the link target
            return _Member(info.filename, "symlink", archive.read(info).decode("utf-8", "replace"))
        return _Member(info.filename, "dir" if info.is_dir() else "file")

    return [member(info) for info in archive.infolist()]


class Archive:
    """A .tar(.gz) or .zip opened read-only; every member is checked for safety on open.

    Reading members in place (instead of extracting them) is what makes preparing 110,000
    TinyImageNet JPEGs fast; the checks make a tampered archive fail early with a clear error.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            if zipfile.is_zipfile(self.path):
                zf = zipfile.ZipFile(self.path)
                self._handle: zipfile.ZipFile | tarfile.TarFile = zf
                self._open: Callable[[str], IO[bytes]] = zf.open
                with self._closed_on_error():
                    check_zip_size(zf, self.path.stat().st_size, self.path.name)
                    members = _zip_members(zf)
            elif tarfile.is_tarfile(self.path):
                tar = tarfile.open(self.path)
                self._handle = tar
                with self._closed_on_error():
                    infos = _tar_infos(tar, self.path)
                    members = _tar_members(infos)
                # tarfile looks a name up by a linear scan: by TarInfo, reading N members is not O(N^2)
                by_name = {info.name: info for info in infos}
                self._open = lambda name: tar.extractfile(by_name[name])  # type: ignore[return-value]
            else:
                raise DataError(f"{self.path} is neither a tar nor a zip archive; delete it and download again")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
            raise DataError(f"{self.path} is damaged ({err}); delete it and download again") from None
        for member in members:
            if problem := _member_problem(member):
                self.close()
                raise DataError(f"refusing unsafe archive {self.path.name}: member {member.name!r}: {problem}")
        self.files = [m.name for m in members if m.kind == "file"]
        self._file_set = set(self.files)

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def read(self, name: str) -> bytes:
        """The content of regular-file member ``name``."""
        if name not in self._file_set:
            raise DataError(f"{self.path.name} has no file {name!r}; is it the right (complete) archive?")
        try:
            with self._open(name) as f:
                return f.read()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:  # a bad CRC, a cut-off member
            raise DataError(f"{self.path} is damaged: its member {name} cannot be read ({err}); delete it and "
                            "download again") from None

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SCRATCH_PREFIX = ".extract-"


@contextlib.contextmanager
def scratch_folder(archive: Path) -> Iterator[str]:
    """A temporary folder beside `archive` to extract into, removed afterwards: a reader that needs
    members as files uses it. Named after the archive and marked (`files.temporary_folder`), so that
    the next preparation from it (under its lock, see `fetch`) can remove one that a killed process left."""
    folder = temporary_folder(archive.parent, f"{SCRATCH_PREFIX}{archive.name}-")
    try:
        yield str(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_scratch(downloads: Path, archive_name: str) -> None:
    """Remove the scratch folders of `archive_name` that killed preparations left (call it holding its lock)."""
    remove_stale(downloads, re.compile(re.escape(f"{SCRATCH_PREFIX}{archive_name}-") + RANDOM_PART), folders=True)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike,
                 names: Iterable[str] | None = None) -> list[Path]:
    """Extract regular files (all, or just ``names``) from a tar or zip into ``dest``.

    The whole archive is refused if any member is absolute, contains ``..``, or is a link
    pointing outside; links and special files are never created, and every target path is
    re-checked after resolving so that nothing is written outside ``dest``.
    """
    dest = Path(dest)
    written = []
    with Archive(Path(archive)) as ar:
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for name in ar.files if names is None else names:
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise DataError(f"refusing to extract {name!r}: it would land outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(ar.read(name))
            written.append(target)
    return written
