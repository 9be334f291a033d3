"""A prepared set written whole or not at all: its files saved in a new marked temporary folder
(`files.temporary_folder`), then moved into place (`write_dataset`; `data.imported` swaps an imported
set's folder whole instead). An interruption leaves the set incomplete, never a mix that looks
complete; the temporary folders a killed process left are removed later by their exact name and
their mark, never one a user named alike (`remove_stale_dataset_temporaries`, under the lock they
are made under).
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from resbench.console import printable
from resbench.data.fetch.download import disk_advice
from resbench.data.recipes.common import Splits, StreamedArray
from resbench.errors import DataError
from resbench.files import RANDOM_PART, remove_stale, temporary_folder, unmark


def _temporary_prefix(name: str) -> str:
    return f".{name}.tmp-"


def write_temporary(parent: Path, name: str, splits: Splits | Mapping[str, bytes]) -> Path:
    """The arrays (or, for a value of bytes, those bytes: an imported set's dataset.json) saved in their
    order in a new marked temporary folder `.<name>.tmp-XXXXXXXX` of `parent` (`files.temporary_folder`);
    nothing is left of it if that fails."""
    tmp = temporary_folder(parent, _temporary_prefix(name))
    try:
        for filename, array in splits.items():  # one at a time: a LazySplits makes each array here
            if isinstance(array, bytes):
                (tmp / filename).write_bytes(array)
            elif isinstance(array, StreamedArray):
                write_streamed(tmp / filename, array)
            else:
                np.save(tmp / filename, array, allow_pickle=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


@contextmanager
def write_errors_named(data_root: Path, name: str) -> Iterator[None]:
    """An OSError while writing `name` is one DataError naming the set and the fix."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"cannot write {name} in {data_root} ({printable(exc.strerror or exc)}); "
                        f"{disk_advice(exc)}, then run again (nothing half-written was kept)") from None


def write_dataset(data_root: Path, name: str, splits: Splits | Mapping[str, bytes]) -> Path:
    """Save the arrays in a hidden temporary folder (`write_temporary`), then move them into place.

    A new dataset folder is the temporary folder renamed (atomic). An existing one (an incomplete
    or damaged earlier copy, maybe holding the user's own files) keeps everything but the prepared
    files: their old copies are removed, then the new ones renamed in from a temporary folder inside
    it, so an interruption leaves the dataset incomplete, never a mix that looks complete.
    """
    filenames = list(splits)
    target = data_root / name
    replacing = os.path.lexists(target)
    if replacing:
        _check_replaceable(target, filenames)
    with write_errors_named(data_root, name):
        tmp = write_temporary(target if replacing else data_root, name, splits)
        try:
            unmark(tmp)
            if not replacing:
                os.replace(tmp, target)
                return target
            for filename in filenames:
                (target / filename).unlink(missing_ok=True)
            for filename in filenames:
                os.replace(tmp / filename, target / filename)
            tmp.rmdir()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def write_streamed(path: Path, array: StreamedArray) -> None:
    """A new .npy written piece by piece: the header np.save would write for the shape, then the rows as
    the pieces come. Plain writes, not a memory map: the pages written go to the page cache, which the
    kernel writes out and frees, where a map's would count as this process's memory until it ended."""
    rows = 0
    with open(path, "xb") as f:  # in the preparation's own new folder: nothing stands there
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                 "fortran_order": False, "shape": array.shape})
        for piece in array.pieces():
            piece = np.ascontiguousarray(piece, dtype=array.dtype)
            rows += len(piece)
            if piece.shape[1:] != array.shape[1:] or rows > array.shape[0]:
                raise DataError(f"{path.name}: a piece of shape {piece.shape} does not fit the {array.shape} "
                                "declared; prepare it again")
            f.write(piece.data)
    if rows != array.shape[0]:
        raise DataError(f"{path.name}: {rows:,} rows were made of the {array.shape[0]:,} declared; prepare it again")


def _check_replaceable(target: Path, filenames: list[str]) -> None:
    """Refuse, naming it, an existing dataset path whose prepared files cannot simply be replaced; a link
    among them (the tool writes only into folders of its own: `files.own_folder`)."""
    if target.is_symlink():
        raise DataError(f"{target} is a symbolic link, and resbench never writes through one; move it away, or "
                        "prepare the set where it leads (--data_root that folder's parent)")
    if not target.is_dir():
        raise DataError(f"{target} is not a folder (a file or a broken link stands there); move it away and run again")
    if folders := [f for f in filenames if (target / f).is_dir() and not (target / f).is_symlink()]:
        raise DataError(f"{target} holds folders named {', '.join(folders)} where the prepared files go; "
                        "move them away and run again")


def remove_stale_dataset_temporaries(root: Path, name: str) -> None:
    """Remove the temporary folders a killed `write_dataset` of `name` left, by their exact name and mark
    (call it under the lock it writes under); never through a link planted as the set's folder."""
    pattern = re.compile(re.escape(_temporary_prefix(name)) + RANDOM_PART)
    remove_stale(root, pattern, folders=True)
    if not os.path.islink(root / name):
        remove_stale(root / name, pattern, folders=True)
