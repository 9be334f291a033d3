"""CIFAR-10 and CIFAR-100 from the official "python version" tarballs.

Each pickled batch holds ``data`` rows of 3072 bytes (1024 R, then G, then B, each row-major
32x32), reshaped to N x 3 x 32 x 32 and transposed to NHWC. Train = ``data_batch_1`` ...
``data_batch_5`` in that order (CIFAR-100: ``train``); test = ``test_batch`` (CIFAR-100:
``test``). CIFAR-100 uses the 100 ``fine_labels``. Batches are unpickled by a restricted
unpickler that only rebuilds dicts, lists, strings, ints and numpy arrays, so a tampered
archive cannot run code, and whose constructors may not allocate more than the batch file holds
(a tampered pickle can ask `bytes` or an array constructor for 10^13 bytes).
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from resbench.data.fetch.archive import safe_extract, scratch_folder
from resbench.data.recipes.common import Reader, Splits
from resbench.errors import DataError


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_NUMPY_RECONSTRUCT = _numpy_reconstruct()


def _check_allocation(nbytes: int, limit: int) -> None:
    if nbytes > limit:
        raise pickle.UnpicklingError(f"it asks for {nbytes:,} bytes, more than the {limit:,} bytes of the batch")


def _array_bytes(shape: Any, dtype: Any) -> int:
    """Bytes of an array of `shape` and `dtype`; 0 when they are malformed (the constructor refuses those)."""
    try:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        return math.prod(int(d) for d in dims) * np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return 0


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dict/list/str/bytes/int and numpy arrays, nothing callable.

    The official batches were pickled by numpy 1.x (``numpy.core``); numpy 2 writes
    ``numpy._core``. Both names map to the same array constructor. The constructors that allocate
    a size given as an argument (bytes(n), an empty array of a shape) are bounded by `limit`, the
    size of the batch file: a genuine array never holds more bytes than the pickle that carries them.
    """

    def __init__(self, file: io.BytesIO, limit: int):
        super().__init__(file, encoding="bytes")
        self._bounded: dict[object, Callable] = {
            _NUMPY_RECONSTRUCT: self._reconstruct, np.ndarray: self._ndarray, bytes: self._bytes}
        self._limit = limit

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        _check_allocation(_array_bytes(shape, dtype), self._limit)
        # the pickle names the array type by the global `numpy.ndarray`, which is self._ndarray here
        return _NUMPY_RECONSTRUCT(np.ndarray if subtype == self._ndarray else subtype, shape, dtype)

    def _ndarray(self, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        _check_allocation(_array_bytes(shape, dtype), self._limit)
        return np.ndarray(shape, dtype, *args, **kwargs)

    def _bytes(self, *args: Any) -> bytes:
        if args and isinstance(args[0], int):
            _check_allocation(args[0], self._limit)
        return bytes(*args)

    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        **{(module, t.__name__): t for module in ("builtins", "__builtin__") for t in (dict, list, str, bytes, int)},
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            allowed = self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None
        return self._bounded.get(allowed, allowed)


# What a damaged or tampered batch raises while it is unpickled or its arrays are taken out.
UNREADABLE = (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, MemoryError)


def unreadable(what: str, err: BaseException) -> DataError:
    return DataError(f"cannot read {what} ({str(err) or type(err).__name__}); is the archive genuine?")


def unpickle_batch(content: bytes, what: str) -> Any:
    """A pickled batch (CIFAR's, or the older variant of downsampled ImageNet's) rebuilt by the restricted
    unpickler, which never runs code; DataError naming `what` for anything else."""
    unpickler = _CifarUnpickler(io.BytesIO(content), limit=len(content))
    try:
        return unpickler.load()
    except UNREADABLE as err:
        raise unreadable(what, err) from None
    finally:  # its bound constructors (in the memo too) make a cycle that would keep the batch until the GC ran
        unpickler.memo.clear()
        unpickler._bounded.clear()


def batch_array(value: Any, dtype: Any = None) -> np.ndarray:
    """`value` of an unpickled batch (an array, or a list of int labels) as an array; ValueError for a list
    or tuple holding anything but ints, before numpy walks it: a pickle may hold one list many times over
    (by its memo), so 200 bytes can describe nested lists of 2^60 elements, which np.asarray would visit
    and allocate, whatever the bound on the constructors the unpickler calls."""
    if isinstance(value, (list, tuple)) and not all(type(item) is int for item in value):
        raise ValueError("a list of other things than integers, where a batch holds an array or integer labels")
    return np.asarray(value, dtype)


def load_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from one pickled CIFAR batch."""
    what = f"CIFAR batch {path.name}"
    batch = unpickle_batch(path.read_bytes(), what)  # no larger than the archive allows (`archive.Archive`)
    try:
        rows = batch_array(batch[b"data"], np.uint8)
        labels = batch_array(batch[label_key], np.int64)
    except UNREADABLE as err:
        raise unreadable(what, err) from None
    if rows.ndim != 2 or rows.shape[1] != 3072 or len(labels) != len(rows):
        raise DataError(f"CIFAR batch {path.name} has data of shape {rows.shape} and {len(labels)} labels")
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def reader(folder: str, train: Sequence[str], test: str, label_key: bytes) -> Reader:
    """A reader for one CIFAR tarball (the two differ only in member names and label key)."""

    def read(archive: Path, sizes: Sequence[int]) -> dict[int, Splits]:
        if list(sizes) != [32]:
            raise ValueError(f"CIFAR images are 32x32, not {sizes}")
        with scratch_folder(archive) as scratch:
            safe_extract(archive, scratch, [f"{folder}/{name}" for name in (*train, test)])
            train_parts = [load_batch(Path(scratch, folder, name), label_key) for name in train]
            test_images, test_labels = load_batch(Path(scratch, folder, test), label_key)
        return {32: {
            "train_images.npy": np.concatenate([images for images, _ in train_parts]),
            "train_labels.npy": np.concatenate([labels for _, labels in train_parts]),
            "test_images.npy": test_images,
            "test_labels.npy": test_labels,
        }}

    return read
