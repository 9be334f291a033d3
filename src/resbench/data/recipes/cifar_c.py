"""CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019) from their Zenodo tarballs.

``CIFAR-10-C.tar`` holds ``CIFAR-10-C/<corruption>.npy`` for 19 corruptions, each uint8
(50000, 32, 32, 3): the 10,000 test images corrupted at severity 1 (the first 10,000), then at
severity 2, ... 5, and ``labels.npy``: the 10,000 test labels once per severity. CIFAR-100-C is
the same with 100 classes. The prepared folder keeps that layout (``<corruption>.npy`` and
``labels.npy``, labels as int64).

The arrays are taken from the archive one corruption at a time (150 MB each, 2.9 GB in all)
and each .npy header is checked against the bytes the member really holds before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from resbench.data.facts import SEVERITIES
from resbench.data.fetch.archive import Archive
from resbench.data.recipes.common import LazySplits, Splits, checked_sizes, npy_from_bytes, severity_blocks
from resbench.errors import DataError

# The 15 corruptions of the benchmark (the mean corruption accuracy averages these), then the 4
# extra ones the archive also holds ("held out for validation" in the paper).
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression")
EXTRA = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
CORRUPTIONS = BENCHMARK + EXTRA


def labels_of(ar: Archive, member: str, num_classes: int) -> np.ndarray:
    labels = npy_from_bytes(ar.read(member), member)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{member} holds {labels.dtype} {labels.shape}, not integer labels; is the archive genuine?")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{member} has labels outside [0, {num_classes - 1}]; is it the right archive?")
    severity_blocks(labels, SEVERITIES, member)
    return labels.astype(np.int64)


def images_of(ar: Archive, member: str, count: int) -> np.ndarray:
    images = npy_from_bytes(ar.read(member), member)
    if images.dtype != np.uint8 or images.shape != (count, 32, 32, 3):
        raise DataError(f"{member} holds {images.dtype} {images.shape}, expected uint8 ({count}, 32, 32, 3) "
                        "like labels.npy; is the archive genuine?")
    return images


def reader(folder: str, num_classes: int):
    """A reader for one corruption tarball (CIFAR-10-C and CIFAR-100-C differ in folder and classes)."""

    def read(archive: Path, sizes: Sequence[int]) -> dict[int, Splits]:
        checked_sizes(sizes, 32, folder)
        ar = Archive(archive)
        try:
            labels = labels_of(ar, f"{folder}/labels.npy", num_classes)
            missing = [name for name in CORRUPTIONS if f"{folder}/{name}.npy" not in ar.files]
        except BaseException:
            ar.close()
            raise
        if missing:
            ar.close()
            raise DataError(f"{archive.name} lacks {', '.join(f'{folder}/{m}.npy' for m in missing)}; "
                            "is it the complete archive?")
        makers = {"labels.npy": lambda: labels}
        for name in CORRUPTIONS:
            makers[f"{name}.npy"] = lambda member=f"{folder}/{name}.npy": images_of(ar, member, len(labels))
        return {32: LazySplits(makers, keep_open=ar)}

    return read
