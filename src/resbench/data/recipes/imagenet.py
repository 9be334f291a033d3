"""Downsampled ImageNet (Chrabaszcz, Loshchilov and Hutter, 2017) at 32x32 and 64x64: ImageNet1k_x32 and
ImageNet1k_x64, from the official archives, which image-net.org serves to registered users only.

Two variants of each size, either of which the user places whole (`placed`): npz files, and an older one
of pickled dicts, read by CIFAR's restricted unpickler (never running code). Training data is 10 batches,
``train_data_batch_1`` ... ``train_data_batch_10`` (at 64 px over two archives), validation ``val_data``
(``.npz`` in the npz variant), found by file name wherever they lie in the archives. Each holds ``data``,
uint8 rows of 3·S·S values in CIFAR's planar order (all red, then green, then blue, each row-major
S×S), and ``labels`` 1..1000, written here as NHWC uint8 images and labels 0..999 in the batches' order;
train = the 10 batches (1,281,167 images), test = the validation set (50,000), which is also validation
(`DatasetSpec.val_is_test`).

No checksums are published, so everything is checked instead: the counts (from `facts.DATASETS`), each
batch's shapes, dtypes and label range; each archive's SHA-256 is recorded in SOURCES_FILE. The 15.7 GB
of 64 px training images are never held: each batch is read, checked and written in order
(`StreamedArray`), so preparing holds one batch (1.6 GB at 64 px) and its archive member at a time.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from resbench.console import log, progress
from resbench.data import facts
from resbench.data.fetch.archive import Archive, check_zip_size
from resbench.data.fetch.download import file_digest
from resbench.data.recipes.cifar import batch_array, unpickle_batch
from resbench.data.recipes.common import (
    LazySplits,
    Placed,
    Reader,
    Splits,
    StreamedArray,
    checked_sizes,
    npy_from_bytes,
)
from resbench.errors import DataError

TRAIN_BATCHES = 10
SOURCES_FILE = "sources.json"  # beside the prepared files: the archives they were made from, with their SHA-256
CHUNK_ROWS = 8192  # rows made NHWC and written at a time: 100 MB at 64 px
WHERE = "https://image-net.org/download-images.php (sign in; 'Downsampled ImageNet')"


def placed(size: int) -> Placed:
    """The official archive names of each variant at `size` px: training archives first, validation last."""
    parts = ["_train"] if size == 32 else ["_train_part1", "_train_part2"]
    return Placed({variant: tuple(f"Imagenet{size}{part}{suffix}.zip" for part in [*parts, "_val"])
                   for variant, suffix in (("npz", "_npz"), ("pickled", ""))}, WHERE)


def reader(name: str) -> Reader:
    """The reader of `name` (ImageNet1k_x32 or _x64) from one variant's placed archives, as `placed` lists them."""

    def read(archives: Sequence[Path], sizes: Sequence[int]) -> dict[int, Splits]:
        spec = facts.DATASETS[name]
        checked_sizes(sizes, spec.image_size, name)
        suffix = ".npz" if archives[0].name.endswith("_npz.zip") else ""
        opened = contextlib.ExitStack()
        with contextlib.ExitStack() as on_error:
            on_error.callback(opened.close)
            found = [opened.enter_context(Archive(path)) for path in archives]
            train = Batches([member(found, f"train_data_batch_{i}{suffix}") for i in range(1, TRAIN_BATCHES + 1)],
                            spec, spec.num_train, "training")
            val = Batches([member(found, f"val_data{suffix}")], spec, spec.num_test, "validation")
            on_error.pop_all()
        return {spec.image_size: LazySplits({
            "train_images.npy": train.images, "train_labels.npy": train.labels,
            "test_images.npy": val.images, "test_labels.npy": val.labels,
            SOURCES_FILE: lambda: sources_json(name, archives, "npz" if suffix else "pickled"),
        }, keep_open=opened)}

    return read


def member(archives: list[Archive], filename: str) -> tuple[Archive, str]:
    """The one member named `filename` (in any folder) of the archives."""
    found = [(ar, name) for ar in archives for name in ar.files if posixpath.basename(name) == filename]
    names = " and ".join(ar.path.name for ar in archives)
    if not found:
        raise DataError(f"{names} hold no file {filename}: are they the complete official archives?")
    if len(found) > 1:
        raise DataError(f"{names} hold {filename} {len(found)} times ({', '.join(n for _, n in found[:3])}); "
                        "are they the official archives?")
    return found[0]


class Batches:
    """The batches of one split, read one at a time and written as they are read: `images()` first (a
    StreamedArray of their NHWC rows, checked as they come), then `labels()`, kept on the way (small)."""

    def __init__(self, members: list[tuple[Archive, str]], spec: facts.DatasetSpec, count: int, split: str):
        self.members, self.spec, self.count, self.split = members, spec, count, split
        self._labels: list[np.ndarray] = []

    def images(self) -> StreamedArray:
        size = self.spec.image_size
        return StreamedArray((self.count, size, size, 3), np.dtype(np.uint8), self._pieces)

    def _pieces(self) -> Iterator[np.ndarray]:
        self._labels, held = [], 0
        with progress(self.count, f"{self.spec.name} {self.split} images", unit="img") as bar:
            for archive, name in self.members:
                rows, labels = read_batch(archive, name, self.spec)
                held += len(rows)
                if held > self.count:
                    raise DataError(f"{archive.path.name}: the {self.split} batches up to {name} hold {held:,} "
                                    f"images, more than {self.spec.name}'s {self.count:,}; are they the official "
                                    "archives?")
                self._labels.append(labels)
                for start in range(0, len(rows), CHUNK_ROWS):
                    chunk = rows[start:start + CHUNK_ROWS]
                    yield nhwc(chunk, self.spec.image_size)
                    bar.update(len(chunk))
        if held != self.count:
            files = ", ".join(dict.fromkeys(archive.path.name for archive, _ in self.members))
            raise DataError(f"{files}: the {self.split} batches hold {held:,} images, not {self.spec.name}'s "
                            f"{self.count:,}; are they complete (and the official archives)?")

    def labels(self) -> np.ndarray:
        """The labels 0..999 of the images written before (`images()` reads the batches)."""
        if sum(map(len, self._labels)) != self.count:
            raise RuntimeError(f"the {self.split} labels are known once its images are written")
        return np.concatenate(self._labels)


def nhwc(rows: np.ndarray, size: int) -> np.ndarray:
    """Planar rows (N, 3·S·S: R, G, B planes, each row-major) as NHWC images (N, S, S, 3)."""
    return np.ascontiguousarray(rows.reshape(-1, 3, size, size).transpose(0, 2, 3, 1))


def read_batch(archive: Archive, name: str, spec: facts.DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """One batch's rows (N, 3·S·S) uint8 and labels (N,) int64 in 0..classes-1, every fact checked."""
    what = f"{archive.path.name}: {name}"
    content = archive.read(name)
    data, labels = npz_batch(content, what) if name.endswith(".npz") else pickled_batch(content, what)
    del content
    values = 3 * spec.image_size ** 2
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != values:
        raise DataError(f"{what} holds {data.dtype} data of shape {data.shape}, not uint8 rows of {values:,} values "
                        f"({spec.image_size}x{spec.image_size} RGB); is it the {spec.image_size} px archive?")
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise DataError(f"{what} holds {labels.dtype} labels of shape {labels.shape} for {len(data):,} images; "
                        "is the archive genuine?")
    if len(labels) and (labels.min() < 1 or labels.max() > spec.num_classes):
        raise DataError(f"{what} holds labels from {labels.min()} to {labels.max()}, not 1..{spec.num_classes}; "
                        "is the archive genuine?")
    return data, labels.astype(np.int64) - 1


def npz_batch(content: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`data` and `labels` of an .npz member, each .npy checked against its bytes before it is read
    (`npy_from_bytes`) and the .npz's members bounded like an archive's (a zip bomb inside the zip)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as npz:
            check_zip_size(npz, len(content), what)
            if missing := [f"{key}.npy" for key in ("data", "labels") if f"{key}.npy" not in npz.namelist()]:
                raise DataError(f"{what} holds no {' or '.join(missing)}; is the archive genuine?")
            data, labels = (npy_from_bytes(npz.read(f"{key}.npy"), f"{what}: {key}") for key in ("data", "labels"))
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"{what} is not a readable .npz ({err}); is the archive complete?") from None
    return data, labels


def pickled_batch(content: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`data` and `labels` of a pickled dict (its keys str or, pickled by Python 2, bytes)."""
    batch = unpickle_batch(content, what)
    arrays = []
    for key in ("data", "labels"):
        value = batch.get(key, batch.get(key.encode())) if isinstance(batch, dict) else None
        if value is None:
            raise DataError(f"{what} holds no {key}; is the archive genuine?")
        try:
            arrays.append(batch_array(value))
        except (TypeError, ValueError, OverflowError) as err:
            raise DataError(f"{what}: its {key} is no array ({err}); is the archive genuine?") from None
    return arrays[0], arrays[1]


def sources_json(name: str, archives: Sequence[Path], variant: str) -> bytes:
    """SOURCES_FILE: the archives (name, bytes, SHA-256) a prepared set was made from, since image-net.org
    publishes no checksum to check them against."""
    record = {"dataset": name, "variant": variant, "archives": []}
    for path in archives:
        digest = file_digest(path, "sha256")
        log(f"{path.name}: sha256 {digest}")
        record["archives"].append({"name": path.name, "bytes": path.stat().st_size, "sha256": digest})
    record["checked"] = ("no checksum is published: the image counts, each batch's shapes, dtypes and label "
                         "range were checked instead")
    return (json.dumps(record, indent=1) + "\n").encode()
