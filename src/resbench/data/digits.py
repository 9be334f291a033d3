"""The offline demo set, Digits_x32: scikit-learn's bundled 8×8 digits made 32×32 RGB, so that the
demo runs every line of a real dataset's path without a download."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from resbench.data.facts import DEMO_TEST_SIZE
from resbench.errors import DataFileError

NEEDS_SCIKIT_LEARN = "the Digits_x32 demo needs scikit-learn: pip install 'resbench[demo]'"


def bundled_digits_file() -> Path | None:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn (None where it is not installed
    or keeps the file elsewhere): importing it costs 1.7 s, twenty times the read, in every demo run."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """(images 1,797×8×8 float64 in 0..16, labels int64): what sklearn.datasets.load_digits returns."""
    path = bundled_digits_file()
    if path is not None:  # read as load_digits reads it: one CSV row per image, its label last
        with gzip.open(path) as rows:
            table = np.loadtxt(rows, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataFileError(NEEDS_SCIKIT_LEARN) from None
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def digits_arrays() -> tuple[np.ndarray, ...]:
    """scikit-learn's bundled digits as 32×32 RGB uint8, in a fixed shuffled order.

    The 8×8 images (values 0..16) are upsampled bilinearly and repeated over three channels, so
    the demo exercises exactly the code path of the real datasets.
    """
    images_8x8, targets = digits_8x8()
    order = np.random.RandomState(0).permutation(len(targets))
    small = torch.from_numpy(images_8x8[order] / 16.0).float().unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = targets[order]
    n_train = len(labels) - DEMO_TEST_SIZE
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]
