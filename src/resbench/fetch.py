"""Fetch, verify and prepare the four benchmark datasets, online or offline.

Prepared layout (what the trainer reads, and what users of the reference already have)::

    <data_root>/<NAME>/train_images.npy   uint8, N x S x S x 3 (NHWC, RGB)
    <data_root>/<NAME>/train_labels.npy   int64, N (class ids)
    <data_root>/<NAME>/test_images.npy
    <data_root>/<NAME>/test_labels.npy

Sources and conversions:

* CIFAR10_x32 / CIFAR100_x32: the official "python version" tarballs. Each pickled batch holds
  ``data`` rows of 3072 bytes (1024 R, then G, then B, each row-major 32x32), reshaped to
  N x 3 x 32 x 32 and transposed to NHWC. Train = ``data_batch_1`` ... ``data_batch_5`` in that
  order (CIFAR-100: ``train``); test = ``test_batch`` (CIFAR-100: ``test``). CIFAR-100 uses the
  100 ``fine_labels``. Batches are unpickled by a restricted unpickler that only rebuilds
  dicts, lists, strings, ints and numpy arrays, so a tampered archive cannot run code.
* TinyImageNet200_x64: the official ``tiny-imagenet-200.zip``. Class id = line index in
  ``wnids.txt``. Train = ``train/<wnid>/images/*.JPEG`` in round-robin class order: each
  class's file names are sorted, then image 0 of class 0, image 0 of class 1, ..., image 1 of
  class 0, ... (a class with fewer images simply drops out of later rounds). The trainer takes
  the first 81,920 images for training and the last 18,080 for validation, so this order gives
  a validation split that covers every class. Test = the official labelled validation set
  (``val/images``, labels from ``val/val_annotations.txt``), sorted by file name. Every JPEG is
  converted to RGB (a few are grayscale).
* TinyImageNet200_x32: the same 64x64 images downsampled 2x with PIL ``Image.BOX``, which for
  an exact factor of 2 is the mean of each 2x2 block (antialiased, no aliasing from skipped
  pixels). Both variants come from one archive, decoded once when both are requested.

Robustness: archives are looked for first in ``<data_root>/downloads/`` under their official
file name (no network access then), else fetched from the official URL or ``--mirror`` (a base
URL or a local folder). Downloads stream to ``<file>.part``, time out instead of hanging, retry
with exponential back-off, resume with HTTP Range requests, and are moved into place only after
their MD5 matches. Preparation writes into ``<data_root>/.<NAME>.tmp-XXXX`` and renames the
folder into place at the end, so an interrupted run never leaves a dataset that looks complete.
Processes preparing from the same archive at once (``resbench sweep --jobs 2`` on an empty data
root) take turns under ``<data_root>/.<archive>.lock``; the later one finds the data prepared.
Archive members with absolute paths, ``..`` components, or links pointing outside are refused.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import io
import os
import pickle
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import data
from .checkpoint import current_umask
from .data import DataFileError, read_prepared
from .errors import ResbenchError


class DataError(ResbenchError):
    """A dataset cannot be fetched or prepared; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Source:
    """Where a dataset's official archive comes from and the MD5 it must have."""

    filename: str
    url: str
    md5: str


_CIFAR10 = Source(
    "cifar-10-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
_CIFAR100 = Source(
    "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)
_TINYIMAGENET = Source(
    "tiny-imagenet-200.zip",
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "90528d7ca1a48142e341f4ef8d21d0de",
)

#: Official archive per dataset. Module-level so that tests (or a user with a re-packed
#: archive) can substitute other checksums; the official values are the defaults.
SOURCES: dict[str, Source] = {
    "CIFAR10_x32": _CIFAR10,
    "CIFAR100_x32": _CIFAR100,
    "TinyImageNet200_x32": _TINYIMAGENET,
    "TinyImageNet200_x64": _TINYIMAGENET,
}

SPLIT_FILES = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")
DOWNLOADS_DIR = "downloads"
_CHUNK = 1 << 20

#: Arrays of one prepared dataset, keyed by file name in SPLIT_FILES.
Splits = dict[str, np.ndarray]
#: A reader turns one archive into the prepared arrays at each requested image size.
Reader = Callable[[Path, Sequence[int]], dict[int, Splits]]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(total: int | None, desc: str, initial: int = 0, unit: str = "B") -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal (logs stay clean)."""
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000, file=sys.stderr,
        disable=not sys.stderr.isatty(), leave=False,
    )


# ----------------------------------------------------------------------------- downloading


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks (archives are hundreds of MB)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: Path, expected: str, *, delete: bool) -> None:
    """Raise DataError on a mismatch; a downloaded file is deleted so it is never used as data."""
    actual = file_md5(path)
    if actual == expected.lower():
        return
    name = path.name.removesuffix(".part")
    if delete:
        path.unlink()
        advice = "the download was deleted; try again, or use --mirror"
    else:
        advice = f"replace or delete {path} (or pass --no-verify if you trust it)"
    raise DataError(f"checksum mismatch for {name}: expected md5 {expected}, got {actual}; {advice}")


class _ShortTransfer(OSError):
    """The connection ended before the announced number of bytes arrived (retried)."""


def _content_range_start(value: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes A-B/T`` header, or None if absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    first = value[len("bytes "):].split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """One attempt: continue ``part`` from its current size if the server honours the Range.

    A 206 whose range starts at our offset is appended; anything else (200, or a 206 for
    another range) means the server sends the whole file, so the part file restarts at zero.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "resbench"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # our part file is not a prefix of the remote file: start over
            part.unlink(missing_ok=True)
        raise
    with response:
        resumed = (offset > 0 and getattr(response, "status", None) == 206
                   and _content_range_start(response.headers.get("Content-Range")) == offset)
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, _progress(total, part.name, start) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise _ShortTransfer(f"connection closed after {part.stat().st_size} of {total} bytes")


def _describe(err: Exception) -> str:
    """A short reason: urllib wraps socket errors as '<urlopen error ...>'."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return str(err.reason)
    return str(err) or err.__class__.__name__


def _is_permanent(err: Exception) -> bool:
    """Client errors (404, 403, ...) will not go away by retrying; timeouts and resets may."""
    return isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 416, 429)


def download(url: str, dest: Path, md5: str | None, *, timeout: float = 30.0,
             tries: int = 4, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``; resumable, verified, then moved into place.

    ``timeout`` is the socket timeout in seconds (a stalled server raises instead of hanging);
    failed attempts are retried ``tries`` times in all, sleeping backoff, 2*backoff, ... between
    them and resuming where the previous attempt stopped. With ``md5=None`` nothing is checked.
    A partial ``.part`` file is kept after a final failure so that the next run resumes it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _log(f"downloading {url}")
    for attempt in range(1, tries + 1):
        try:
            _fetch_once(url, part, timeout)
            break
        except (OSError, http.client.HTTPException) as err:
            if attempt == tries or _is_permanent(err):
                raise DataError(
                    f"could not download {url} ({_describe(err)}); check the network and run again to resume, "
                    f"or place {dest.name} in {dest.parent}, or use --mirror") from None
            delay = backoff * 2 ** (attempt - 1)
            _log(f"download attempt {attempt}/{tries} failed ({_describe(err)}); retrying in {delay:g} s")
            time.sleep(delay)
    if md5 is not None:
        _check_md5(part, md5, delete=True)
    os.replace(part, dest)
    return dest


def _archive_url(source: Source, mirror: str | None) -> str:
    """The URL to fetch ``source`` from: official, a mirror base URL, or a local mirror folder."""
    if mirror is None:
        return source.url
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + source.filename
    local = Path(mirror).expanduser() / source.filename
    if not local.is_file():
        raise DataError(f"{source.filename} not found in mirror folder {mirror}; put it there or drop --mirror")
    return local.resolve().as_uri()


def fetch_archive(source: Source, downloads: Path, mirror: str | None = None, verify: bool = True) -> Path:
    """Return the verified archive in ``downloads``, fetching it only if it is not there yet.

    An archive placed there by hand is used without any network access (but still verified;
    it is not deleted on a mismatch, since the user put it there).
    """
    dest = downloads / source.filename
    if not verify:
        _log(f"warning: --no-verify: the MD5 of {source.filename} is not checked")
    if dest.is_file():
        _log(f"using {dest}")
        if verify:
            _check_md5(dest, source.md5, delete=False)
        return dest
    return download(_archive_url(source, mirror), dest, source.md5 if verify else None)


# ----------------------------------------------------------------------------- archives


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


def _tar_members(tar: tarfile.TarFile) -> list[_Member]:
    def kind(info: tarfile.TarInfo) -> str:
        if info.isfile():
            return "file"
        if info.isdir():
            return "dir"
        if info.issym():
            return "symlink"
        return "hardlink" if info.islnk() else "other"

    return [_Member(info.name, kind(info), info.linkname) for info in tar.getmembers()]


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
                members = _zip_members(zf)
                self._open: Callable[[str], IO[bytes]] = zf.open
                self._handle: zipfile.ZipFile | tarfile.TarFile = zf
            elif tarfile.is_tarfile(self.path):
                tar = tarfile.open(self.path)
                members = _tar_members(tar)
                self._open = lambda name: tar.extractfile(name)  # type: ignore[return-value]
                self._handle = tar
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

    def read(self, name: str) -> bytes:
        """The content of regular-file member ``name``."""
        if name not in self._file_set:
            raise DataError(f"{self.path.name} has no file {name!r}; is it the right (complete) archive?")
        with self._open(name) as f:
            return f.read()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


# ----------------------------------------------------------------------------- CIFAR


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_NUMPY_RECONSTRUCT = _numpy_reconstruct()


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dict/list/str/bytes/int and numpy arrays, nothing callable.

    The official batches were pickled by numpy 1.x (``numpy.core``); numpy 2 writes
    ``numpy._core``. Both names map to the same array constructor.
    """

    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        **{(module, t.__name__): t for module in ("builtins", "__builtin__") for t in (dict, list, str, bytes, int)},
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def _load_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from one pickled CIFAR batch."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        rows = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as err:
        raise DataError(f"cannot read CIFAR batch {path.name} ({err}); is the archive genuine?") from None
    if rows.ndim != 2 or rows.shape[1] != 3072 or len(labels) != len(rows):
        raise DataError(f"CIFAR batch {path.name} has data of shape {rows.shape} and {len(labels)} labels")
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_reader(folder: str, train: Sequence[str], test: str, label_key: bytes) -> Reader:
    """A reader for one CIFAR tarball (the two differ only in member names and label key)."""

    def read(archive: Path, sizes: Sequence[int]) -> dict[int, Splits]:
        if list(sizes) != [32]:
            raise ValueError(f"CIFAR images are 32x32, not {sizes}")
        with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".extract-") as scratch:
            safe_extract(archive, scratch, [f"{folder}/{name}" for name in (*train, test)])
            train_parts = [_load_cifar_batch(Path(scratch, folder, name), label_key) for name in train]
            test_images, test_labels = _load_cifar_batch(Path(scratch, folder, test), label_key)
        return {32: {
            "train_images.npy": np.concatenate([images for images, _ in train_parts]),
            "train_labels.npy": np.concatenate([labels for _, labels in train_parts]),
            "test_images.npy": test_images,
            "test_labels.npy": test_labels,
        }}

    return read


# ----------------------------------------------------------------------------- TinyImageNet

_TINY_ROOT = "tiny-imagenet-200"


def _train_image_wnid(member: str) -> str | None:
    """The wnid of a ``tiny-imagenet-200/train/<wnid>/images/*.JPEG`` member, else None."""
    parts = member.split("/")
    is_image = len(parts) == 5 and parts[:2] == [_TINY_ROOT, "train"] and parts[3] == "images"
    return parts[2] if is_image and parts[4].endswith(".JPEG") else None


def _tiny_train_order(files: Iterable[str], wnids: list[str]) -> list[tuple[str, int]]:
    """(member, class id) of the training images in round-robin class order (see module doc)."""
    class_id = {wnid: i for i, wnid in enumerate(wnids)}
    per_class: list[list[str]] = [[] for _ in wnids]
    for name in files:
        if (wnid := _train_image_wnid(name)) is None:
            continue
        if wnid not in class_id:
            raise DataError(f"training image {name} belongs to no class in wnids.txt")
        per_class[class_id[wnid]].append(name)
    for i, names in enumerate(per_class):
        if not names:
            raise DataError(f"no training images for class {wnids[i]} in the TinyImageNet archive")
        names.sort()
    rounds = max(len(names) for names in per_class)
    return [(names[r], c) for r in range(rounds) for c, names in enumerate(per_class) if r < len(names)]


def _tiny_test_order(annotations: str, wnids: list[str]) -> list[tuple[str, int]]:
    """(member, class id) of the labelled validation images, sorted by file name."""
    class_id = {wnid: i for i, wnid in enumerate(wnids)}
    pairs = []
    for line in annotations.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"malformed line in val_annotations.txt: {line!r}; is the archive genuine?")
        filename, wnid = fields[:2]
        if wnid not in class_id:
            raise DataError(f"val_annotations.txt labels {filename} with {wnid}, which is not in wnids.txt")
        pairs.append((f"{_TINY_ROOT}/val/images/{filename}", class_id[wnid]))
    return sorted(pairs)


def _decode_images(ar: Archive, items: list[tuple[str, int]], sizes: Sequence[int],
                   desc: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Decode each JPEG once to 64x64 RGB and store it at every requested size (BOX-resampled)."""
    images = {size: np.empty((len(items), size, size, 3), np.uint8) for size in sizes}
    labels = np.array([label for _, label in items], dtype=np.int64)
    with _progress(len(items), desc, unit="img") as bar:
        for i, (name, _) in enumerate(items):
            with Image.open(io.BytesIO(ar.read(name))) as img:
                rgb = img.convert("RGB")
            if rgb.size != (64, 64):
                raise DataError(f"{name} is {rgb.size[0]}x{rgb.size[1]}, not 64x64; is the archive genuine?")
            for size, out in images.items():
                out[i] = np.asarray(rgb if size == 64 else rgb.resize((size, size), Image.BOX))
            bar.update()
    return {size: (out, labels) for size, out in images.items()}


def _read_tinyimagenet(archive: Path, sizes: Sequence[int]) -> dict[int, Splits]:
    with Archive(archive) as ar:
        wnids = ar.read(f"{_TINY_ROOT}/wnids.txt").decode().split()
        train = _decode_images(ar, _tiny_train_order(ar.files, wnids), sizes, "train images")
        annotations = ar.read(f"{_TINY_ROOT}/val/val_annotations.txt").decode()
        test = _decode_images(ar, _tiny_test_order(annotations, wnids), sizes, "test images")
    return {size: {
        "train_images.npy": train[size][0], "train_labels.npy": train[size][1],
        "test_images.npy": test[size][0], "test_labels.npy": test[size][1],
    } for size in sizes}


# ----------------------------------------------------------------------------- preparation


# Each dataset's archive reader; sizes and class counts come from resbench.data.DATASETS.
_READERS: dict[str, Reader] = {
    "CIFAR10_x32": _cifar_reader(
        "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
    "CIFAR100_x32": _cifar_reader("cifar-100-python", ["train"], "test", b"fine_labels"),
    "TinyImageNet200_x32": _read_tinyimagenet,
    "TinyImageNet200_x64": _read_tinyimagenet,
}
DATASETS: tuple[str, ...] = tuple(_READERS)


def _check_name(name: str) -> str:
    if name not in _READERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def _inspect(data_root: Path, name: str) -> tuple[str | None, dict[str, int]]:
    """(problem or None, sample counts) of a prepared dataset: the trainer's own checks, memory-mapped."""
    try:
        train_x, _, test_x, _ = read_prepared(data.DATASETS[name], data_root, mmap_mode="r")
    except DataFileError as err:
        return str(err), {}
    return None, {"train": len(train_x), "test": len(test_x)}


def is_complete(data_root: str | os.PathLike, name: str) -> bool:
    """Whether ``<data_root>/<name>`` holds all four files with the right shapes and dtypes."""
    return _inspect(Path(data_root), _check_name(name))[0] is None


def _write_dataset(data_root: Path, name: str, splits: Splits) -> Path:
    """Save the arrays in a hidden temporary folder, then rename it into place atomically."""
    target = data_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=data_root))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide a shared data root's datasets
    try:
        for filename in SPLIT_FILES:
            np.save(tmp / filename, splits[filename], allow_pickle=False)
        if target.exists():  # an incomplete earlier attempt or a damaged copy
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _root_error(root: Path, action: str, err: OSError) -> DataError:
    """Why datasets cannot be written under ``root``, as one line instead of a traceback from deep inside."""
    cause = "it exists and is not a folder" if root.exists() and not root.is_dir() else err.strerror or str(err)
    return DataError(f"cannot {action} data root {root} ({cause}); pass a writable folder as --data_root")


def _make_root(root: Path) -> None:
    """Create the data root, or say in one line why it cannot be (a file, an unwritable parent)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _root_error(root, "create", err) from None


def _is_still_at(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file now at ``path``, not one that the previous holder deleted."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _lock_file(path: Path, waiting_message: str) -> int:
    """A descriptor holding an exclusive flock on ``path``; logs ``waiting_message`` once if it must wait."""
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    _log(waiting_message)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_still_at(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextmanager
def _preparation_lock(root: Path, source: Source, names: Sequence[str]) -> Iterator[None]:
    """Hold ``<root>/.<archive>.lock`` while this process downloads and prepares from ``source``.

    Two runs preparing at once (``resbench sweep --jobs 2`` on an empty data root) would write the
    same ``.part`` file and dataset folders; the second waits instead. The lock is per archive
    because both TinyImageNet sizes come from one download. The holder deletes the lock file
    before releasing it (nothing is left behind); a waiter that then holds the deleted file
    notices and locks the path afresh.
    """
    path = root / f".{source.filename}.lock"
    try:
        fd = _lock_file(path, f"waiting for another process preparing {', '.join(names)} in {root} "
                              f"(lock file {path.name})")
    except OSError as err:
        raise _root_error(root, "write in", err) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _incomplete_by_archive(root: Path, names: Sequence[str]) -> dict[tuple[Source, Reader], list[str]]:
    """The datasets among ``names`` that still need preparing, grouped by archive."""
    todo: dict[tuple[Source, Reader], list[str]] = {}
    for name in names:
        if is_complete(root, name):
            _log(f"{name}: already prepared in {root / name}")
        else:
            todo.setdefault((SOURCES[name], _READERS[name]), []).append(name)
    return todo


def _prepare_group(root: Path, source: Source, reader: Reader, group: list[str], mirror: str | None,
                   verify: bool) -> None:
    """Fetch one archive and write every dataset of ``group`` from a single decode."""
    archive = fetch_archive(source, root / DOWNLOADS_DIR, mirror, verify)
    _log(f"preparing {', '.join(group)} from {archive.name}")
    arrays = reader(archive, sorted({data.DATASETS[name].image_size for name in group}))
    for name in group:
        _log(f"{name}: ready in {_write_dataset(root, name, arrays[data.DATASETS[name].image_size])}")


def prepare_datasets(names: Sequence[str], data_root: str | os.PathLike, mirror: str | None = None,
                     verify: bool = True) -> list[Path]:
    """Prepare several datasets; datasets sharing an archive (TinyImageNet) decode it once.

    Complete datasets are left alone without writing anything (a read-only data root is fine
    then). The rest is prepared under the archive's lock, after checking again what another
    process finished while this one waited.
    """
    root = Path(data_root)
    names = [_check_name(name) for name in names]
    todo = _incomplete_by_archive(root, names)
    if todo:
        _make_root(root)
    for (source, reader), group in todo.items():
        with _preparation_lock(root, source, group):
            left = _incomplete_by_archive(root, group).get((source, reader))
            if left:
                _prepare_group(root, source, reader, left, mirror, verify)
    return [root / name for name in names]


def prepare_dataset(name: str, data_root: str | os.PathLike, mirror: str | None = None,
                    verify: bool = True) -> Path:
    """Make ``<data_root>/<name>`` complete (fetching the archive if needed); return that folder.

    A no-op when the dataset is already complete. Progress goes to stderr; failures raise
    DataError with a one-line message.
    """
    return prepare_datasets([name], data_root, mirror, verify)[0]


def _disk_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def dataset_status(data_root: str | os.PathLike) -> list[dict]:
    """One dict per dataset: name, path, present, complete, problem, train/test counts, bytes."""
    rows = []
    for name in DATASETS:
        folder = Path(data_root) / name
        problem, counts = _inspect(Path(data_root), name) if folder.is_dir() else ("not prepared", {})
        rows.append({
            "name": name, "path": str(folder), "present": folder.is_dir(), "complete": problem is None,
            "problem": problem, "train": counts.get("train"), "test": counts.get("test"),
            "bytes": _disk_size(folder),
        })
    return rows


# ----------------------------------------------------------------------------- command line


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _format_status(rows: list[dict]) -> str:
    lines = [f"{'dataset':<21} {'status':<10} {'train':>7} {'test':>7} {'size':>9}  note"]
    for row in rows:
        status = "complete" if row["complete"] else ("damaged" if row["present"] else "missing")
        note = "" if row["complete"] or not row["present"] else row["problem"]
        lines.append(f"{row['name']:<21} {status:<10} {row['train'] or '-':>7} {row['test'] or '-':>7} "
                     f"{_human_size(row['bytes']) if row['present'] else '-':>9}  {note}".rstrip())
    return "\n".join(lines)


def _download_command(args: argparse.Namespace) -> int:
    names = list(DATASETS) if args.name == "all" else [args.name]
    prepare_datasets(names, args.data_root, mirror=args.mirror, verify=not args.no_verify)
    return 0


def _list_command(args: argparse.Namespace) -> int:
    print(f"data root: {Path(args.data_root).resolve()}")
    print(_format_status(dataset_status(args.data_root)))
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data download`` and ``data list``; each sets ``func`` (args -> exit code)."""
    data = subparsers.add_parser("data", help="fetch, verify and prepare datasets",
                                 description="Fetch, verify and prepare the benchmark datasets.")
    commands = data.add_subparsers(dest="data_command", metavar="{download,list}", required=True)

    download_parser = commands.add_parser(
        "download", help="download (or use a placed archive), verify and prepare a dataset",
        description="Prepare <data_root>/NAME/{train,test}_{images,labels}.npy. An archive already in "
                    "<data_root>/downloads/ under its official name is used without network access.")
    download_parser.add_argument("name", metavar="NAME", choices=[*DATASETS, "all"],
                                 help=f"one of {', '.join(DATASETS)}, or all")
    download_parser.add_argument("--mirror", metavar="URL_OR_DIR", default=None,
                                 help="fetch the official file names from this base URL or local folder")
    download_parser.add_argument("--no-verify", action="store_true",
                                 help="skip the MD5 check (prints a warning)")
    download_parser.set_defaults(func=_download_command)

    list_parser = commands.add_parser("list", help="show which datasets are prepared and complete")
    list_parser.set_defaults(func=_list_command)

    for parser in (download_parser, list_parser):
        parser.add_argument("--data_root", default="./data", help="dataset folder (default: ./data)")
    return data
