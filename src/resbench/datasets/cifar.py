"""CIFAR-10 and CIFAR-100 from the official "python version" tarballs.

Each pickled batch holds ``data`` rows of 3072 bytes (1024 R, then G, then B, each row-major
32x32), reshaped to N x 3 x 32 x 32 and transposed to NHWC. Train = ``data_batch_1`` ...
``data_batch_5`` in that order (CIFAR-100: ``train``); test = ``test_batch`` (CIFAR-100:
``test``). CIFAR-100 uses the 100 ``fine_labels``. Batches are unpickled by a restricted
unpickler that only rebuilds dicts, lists, strings, ints and numpy arrays, so a tampered
archive cannot run code.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..archive import safe_extract
from ..errors import DataError
from .common import Reader, Splits


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


def load_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
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


def reader(folder: str, train: Sequence[str], test: str, label_key: bytes) -> Reader:
    """A reader for one CIFAR tarball (the two differ only in member names and label key)."""

    def read(archive: Path, sizes: Sequence[int]) -> dict[int, Splits]:
        if list(sizes) != [32]:
            raise ValueError(f"CIFAR images are 32x32, not {sizes}")
        with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".extract-") as scratch:
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
