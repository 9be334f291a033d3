"""TinyImageNet-200 from the official ``tiny-imagenet-200.zip``, at 64x64 and downsampled to 32x32.

Class id = line index in ``wnids.txt``. Train = ``train/<wnid>/images/*.JPEG`` in round-robin
class order: each class's file names are sorted, then image 0 of class 0, image 0 of class 1, ...,
image 1 of class 0, ... (a class with fewer images simply drops out of later rounds). The trainer
takes the first 81,920 images for training and the last 18,080 for validation, so this order
gives a validation split that covers every class. Test = the official labelled validation set
(``val/images``, labels from ``val/val_annotations.txt``), sorted by file name. Every JPEG is
converted to RGB (a few are grayscale).

TinyImageNet200_x32 is the same 64x64 images downsampled 2x with PIL ``Image.BOX``, which for an
exact factor of 2 is the mean of each 2x2 block (antialiased, no aliasing from skipped pixels).
Both variants come from one archive, decoded once when both are requested.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from resbench.console import progress
from resbench.data.fetch.archive import Archive
from resbench.data.recipes.common import Splits
from resbench.errors import DataError

_ROOT = "tiny-imagenet-200"


def _train_image_wnid(member: str) -> str | None:
    """The wnid of a ``tiny-imagenet-200/train/<wnid>/images/*.JPEG`` member, else None."""
    parts = member.split("/")
    is_image = len(parts) == 5 and parts[:2] == [_ROOT, "train"] and parts[3] == "images"
    return parts[2] if is_image and parts[4].endswith(".JPEG") else None


def train_items(files: Iterable[str], wnids: list[str]) -> list[tuple[str, int]]:
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


def test_items(annotations: str, wnids: list[str]) -> list[tuple[str, int]]:
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
        pairs.append((f"{_ROOT}/val/images/{filename}", class_id[wnid]))
    return sorted(pairs)


def decode_images(ar: Archive, items: list[tuple[str, int]], sizes: Sequence[int],
                  desc: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Decode each JPEG once to 64x64 RGB and store it at every requested size (BOX-resampled)."""
    images = {size: np.empty((len(items), size, size, 3), np.uint8) for size in sizes}
    labels = np.array([label for _, label in items], dtype=np.int64)
    with progress(len(items), desc, unit="img") as bar:
        for i, (name, _) in enumerate(items):
            with Image.open(io.BytesIO(ar.read(name))) as img:
                rgb = img.convert("RGB")
            if rgb.size != (64, 64):
                raise DataError(f"{name} is {rgb.size[0]}x{rgb.size[1]}, not 64x64; is the archive genuine?")
            for size, out in images.items():
                out[i] = np.asarray(rgb if size == 64 else rgb.resize((size, size), Image.BOX))
            bar.update()
    return {size: (out, labels) for size, out in images.items()}


def wnids_of(ar: Archive) -> list[str]:
    """The class wnids in the order of ``wnids.txt``: class id = line index (not sorted order)."""
    return ar.read(f"{_ROOT}/wnids.txt").decode().split()


def read(archive: Path, sizes: Sequence[int]) -> dict[int, Splits]:
    with Archive(archive) as ar:
        wnids = wnids_of(ar)
        train = decode_images(ar, train_items(ar.files, wnids), sizes, "train images")
        annotations = ar.read(f"{_ROOT}/val/val_annotations.txt").decode()
        test = decode_images(ar, test_items(annotations, wnids), sizes, "test images")
    return {size: {
        "train_images.npy": train[size][0], "train_labels.npy": train[size][1],
        "test_images.npy": test[size][0], "test_labels.npy": test[size][1],
    } for size in sizes}
