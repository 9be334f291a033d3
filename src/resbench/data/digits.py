"""The offline demo set, Digits_x32: scikit-learn's bundled 8×8 digits made 32×32 RGB, so that the
demo runs every line of a real dataset's path without a download."""

from __future__ import annotations

import numpy as np
import torch

from resbench.data.facts import DEMO_TEST_SIZE
from resbench.errors import DataFileError


def digits_arrays() -> tuple[np.ndarray, ...]:
    """scikit-learn's bundled digits as 32×32 RGB uint8, in a fixed shuffled order.

    The 8×8 images (values 0..16) are upsampled bilinearly and repeated over three channels, so
    the demo exercises exactly the code path of the real datasets.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataFileError(
            "the Digits_x32 demo needs scikit-learn: pip install 'resbench[demo]'"
        ) from None
    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.target))
    small = torch.from_numpy(digits.images[order] / 16.0).float().unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = digits.target[order].astype(np.int64)
    n_train = len(labels) - DEMO_TEST_SIZE
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]
