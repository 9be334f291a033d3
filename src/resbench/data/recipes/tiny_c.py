"""Tiny-ImageNet-C (Hendrycks & Dietterich, ICLR 2019) from the Zenodo ``Tiny-ImageNet-C.tar``.

The archive holds ``Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/<file>.JPEG``: the 10,000
TinyImageNet validation images (our test split) under 15 corruptions at severities 1-5, 64x64.
The class id of a wnid is its line in ``wnids.txt`` of ``tiny-imagenet-200.zip``, as for the
TinyImageNet training data (not the sorted order of the folder names), so the recipe needs that
archive too. Within a severity the images are sorted by file name, and every corruption and
severity must hold the same files with the same classes; the prepared layout is then the one
of CIFAR-10-C: ``<corruption>.npy`` uint8 (50000, 64, 64, 3), severity after severity, and
``labels.npy``. One corruption is decoded at a time (614 MB); the x32 runs score these images
downsampled exactly as TinyImageNet200_x32 was prepared (`resbench.data.evalsets.box_downsample`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from resbench.data.facts import SEVERITIES
from resbench.data.fetch.archive import Archive
from resbench.data.recipes.common import LazySplits, Splits, checked_sizes
from resbench.data.recipes.tinyimagenet import decode_images, wnids_of
from resbench.errors import DataError

ROOT = "Tiny-ImageNet-C"
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")


def corruption_items(files: Iterable[str], wnids: list[str]) -> dict[str, list[tuple[str, int]]]:
    """(member, class id) of each corruption's images: severity 1 to 5, each sorted by file name."""
    class_id = {wnid: i for i, wnid in enumerate(wnids)}
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for member in files:
        parts = member.split("/")
        if len(parts) != 5 or parts[0] != ROOT or not parts[4].endswith(".JPEG"):
            continue
        _, corruption, severity, wnid, filename = parts
        if wnid not in class_id:
            raise DataError(f"{member} belongs to no class in wnids.txt; is it the right archive?")
        found.setdefault((corruption, severity), []).append((filename, wnid))
    items, reference = {}, None
    for corruption in CORRUPTIONS:
        per_severity = []
        for severity in range(1, SEVERITIES + 1):
            images = sorted(found.get((corruption, str(severity)), []))
            if not images:
                raise DataError(f"the archive has no {ROOT}/{corruption}/{severity}/ images; "
                                "is it the complete archive?")
            if reference is None:
                reference = images
            elif images != reference:
                raise DataError(f"{ROOT}/{corruption}/{severity}/ holds other images than "
                                f"{ROOT}/{CORRUPTIONS[0]}/1/; is the archive genuine?")
            per_severity += [(f"{ROOT}/{corruption}/{severity}/{wnid}/{f}", class_id[wnid]) for f, wnid in images]
        items[corruption] = per_severity
    return items


def read(archive: Path, sizes: Sequence[int], tinyimagenet: Path) -> dict[int, Splits]:
    checked_sizes(sizes, 64, "Tiny-ImageNet-C")
    with Archive(tinyimagenet) as tiny:
        wnids = wnids_of(tiny)
    ar = Archive(archive)
    try:
        items = corruption_items(ar.files, wnids)
    except BaseException:
        ar.close()
        raise
    labels = np.array([label for _, label in items[CORRUPTIONS[0]]], dtype=np.int64)
    makers = {"labels.npy": lambda: labels}
    for name in CORRUPTIONS:
        makers[f"{name}.npy"] = lambda name=name: decode_images(ar, items[name], [64], name)[64][0]
    return {64: LazySplits(makers, keep_open=ar)}
