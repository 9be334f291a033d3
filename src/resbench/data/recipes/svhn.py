"""SVHN's test split (Netzer et al. 2011, "format 2": cropped 32x32 digits) from ``test_32x32.mat``.

The file is a MATLAB v5 .mat read with ``scipy.io.loadmat`` (a parser of the format, no pickle):
``X`` uint8 (32, 32, 3, 26032) and ``y`` (26032, 1) with labels 1..10, where 10 is the digit 0.
Prepared as ``test_images.npy`` (N, 32, 32, 3) and ``test_labels.npy`` (the digit, 0..9). It is
an out-of-distribution set for the CIFAR runs; its labels are kept but not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from resbench.data.recipes.common import Splits, checked_sizes
from resbench.errors import DataError


def loadmat(path: Path) -> dict:
    """scipy's .mat reader, with a clear error where scipy is not installed (it is an optional extra)."""
    try:
        from scipy.io import loadmat as scipy_loadmat
    except ImportError:
        raise DataError("reading SVHN's test_32x32.mat needs scipy: pip install 'resbench[svhn]'") from None
    try:
        return scipy_loadmat(path, variable_names=("X", "y"))
    except MemoryError:
        raise
    except Exception as exc:  # a damaged file fails in scipy's parser in many ways (MatReadError, IndexError, ...)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"cannot read {path.name} as a MATLAB v5 file ({reason}); "
                        "delete it and download again") from None


def read(path: Path, sizes: Sequence[int]) -> dict[int, Splits]:
    checked_sizes(sizes, 32, "SVHN")
    mat = loadmat(path)
    images, labels = mat.get("X"), mat.get("y")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path.name} has no uint8 X of shape (32, 32, 3, N); is it SVHN's test_32x32.mat?")
    if not isinstance(labels, np.ndarray) or labels.size != images.shape[3] or labels.dtype.kind not in "iuf" \
            or not np.isin(labels, np.arange(1, 11)).all():
        raise DataError(f"{path.name} has no y of {images.shape[3]} labels in 1..10; is it SVHN's test_32x32.mat?")
    return {32: {
        "test_images.npy": np.ascontiguousarray(images.transpose(3, 0, 1, 2)),
        "test_labels.npy": labels.reshape(-1).astype(np.int64) % 10,
    }}
