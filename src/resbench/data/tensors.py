"""Datasets as uint8 tensors on the training device, and whole-batch augmentation.

Every split lives on the device as one uint8 NHWC tensor. A training batch is a slice of a
per-epoch permutation, augmented (zero-pad 4, random crop, horizontal flip) for the whole batch
with one gather, so no per-image Python runs on the hot path and no DataLoader is needed.

Batch `t` is a pure function of (seed, t): the permutation of epoch e is drawn from a generator
seeded with (seed, e), the crop offsets and flips of step t from one seeded with (seed, t). A run
resumed at step t therefore sees exactly the batches the uninterrupted run would have seen, and
data-parallel ranks can each cut their share out of the same global batch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resbench.data.facts import DATASETS, DEMO_DATASET, DEMO_TEST_SIZE, DatasetSpec, dataset_spec  # noqa: F401  (the tensors' facts, for their users)
from resbench.errors import ResbenchError

PAD = 4  # pixels of zero padding before the random crop


PREPARED_FILES = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")


class DataFileError(ResbenchError):
    """A prepared data file is missing or malformed; the message names the file and the fix."""


@dataclass
class Splits:
    train_images: torch.Tensor  # uint8, N×H×W×3
    train_labels: torch.Tensor  # int64, N
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def prepared_dir(name: str, data_root: str | Path) -> Path:
    return Path(data_root) / name


def missing_prepared_files(name: str, data_root: str | Path) -> list[Path]:
    if name == DEMO_DATASET:
        return []
    folder = prepared_dir(name, data_root)
    return [folder / f for f in PREPARED_FILES if not (folder / f).is_file()]


def load_splits(name: str, data_root: str | Path, device: torch.device | str = "cpu") -> Splits:
    """Load train/val/test of `name` onto `device`, with the recipe's split of the training file."""
    spec = dataset_spec(name)
    if name == DEMO_DATASET:
        train_x, train_y, test_x, test_y = digits_arrays()
    else:
        train_x, train_y, test_x, test_y = read_prepared(spec, data_root)
    n = spec.num_train
    as_tensor = lambda a: to_tensor(a, device)  # noqa: E731
    return Splits(
        as_tensor(train_x[:n]), as_tensor(train_y[:n]).long(),
        as_tensor(train_x[n:]), as_tensor(train_y[n:]).long(),
        as_tensor(test_x), as_tensor(test_y).long(),
    )


def to_tensor(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A contiguous tensor on `device`, in native byte order.

    torch.from_numpy refuses big-endian arrays (e.g. `>i8` labels written on another machine or by
    another tool); they are valid data, so they are converted instead of rejected.
    """
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))).to(device)


def read_prepared(spec: DatasetSpec, data_root: str | Path, mmap_mode: str | None = None) -> tuple[np.ndarray, ...]:
    """Read and check `<data_root>/<name>/{train,test}_{images,labels}.npy` (the reference layout).

    `mmap_mode="r"` checks a dataset without reading the images (as `resbench data list` does).
    These are all the checks the trainer makes, so `data list`, `data download` and `train` agree
    on whether a dataset is usable.
    """
    missing = missing_prepared_files(spec.name, data_root)
    if missing:
        raise DataFileError(
            f"dataset {spec.name} is not prepared: missing {', '.join(str(p) for p in missing)}; "
            f"run `resbench data download {spec.name} --data_root {data_root}` or place the files there"
        )
    folder = prepared_dir(spec.name, data_root)
    arrays = []
    for split in ("train", "test"):
        images = load_npy(folder / f"{split}_images.npy", mmap_mode)
        labels = load_npy(folder / f"{split}_labels.npy", mmap_mode)
        check_images(folder / f"{split}_images.npy", images, spec.image_size)
        check_labels(folder / f"{split}_labels.npy", labels, len(images), spec.num_classes)
        arrays += [images, labels]
    check_train_count(folder / "train_images.npy", len(arrays[0]), spec)
    return tuple(arrays)


def check_train_count(path: Path, count: int, spec: DatasetSpec) -> None:
    """The training file must hold more than `num_train` images, or the validation split is empty."""
    n = spec.num_train
    if count <= n:
        raise DataFileError(
            f"{path} holds {count} images; {spec.name} needs more than {n} (the first {n} train, "
            "the rest validate); prepare it again"
        )


def load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """One array from a .npy file, its header checked against the file's size first."""
    try:
        check_npy_size(path)
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = " ".join(str(exc).split())  # numpy's own messages may run over several lines
        raise DataFileError(f"{path} is truncated or not a valid .npy file ({reason}); prepare it again") from None


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def check_npy_size(path: Path) -> None:
    """ValueError unless `path` is a .npy file holding all the bytes its header declares.

    numpy allocates what the header declares before reading, so a 1 KB file declaring 10^12 images
    would exhaust the memory; np.load would also open a .npz archive (say, a renamed one).
    """
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError("it is a .npz archive, not a single array")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version not in NPY_HEADER_READERS:
            raise ValueError(f"it is .npy format {version[0]}.{version[1]}; resbench reads 1.0 and 2.0")
        shape, _, dtype = NPY_HEADER_READERS[version](f)
        if any(size < 0 for size in shape):
            raise ValueError(f"its header declares the shape {shape}, with a negative size")
        declared = math.prod(shape) * dtype.itemsize
        held = os.fstat(f.fileno()).st_size - f.tell()
    if declared > held:
        raise ValueError(f"its header declares a {dtype} array of shape {shape}, {declared:,} bytes, "
                         f"but it holds {held:,}")


def check_images(path: Path, images: np.ndarray, size: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3) or not len(images):
        raise DataFileError(
            f"{path} holds {images.dtype} {images.shape}, expected uint8 (N, {size}, {size}, 3) NHWC images; "
            "prepare it again"
        )


def check_labels(path: Path, labels: np.ndarray, count: int, num_classes: int) -> None:
    if labels.ndim != 1 or labels.shape[0] != count or labels.dtype.kind not in "iu":
        raise DataFileError(f"{path} holds {labels.dtype} {labels.shape}, expected {count} integer labels")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFileError(
            f"{path} has labels in [{labels.min()}, {labels.max()}], expected [0, {num_classes - 1}]"
        )


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


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float [0, 1] NCHW, kept in channels_last memory (no copy of the layout)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad by PAD, crop at offsets (dy, dx) in [0, 2·PAD], mirror where `flip`: one gather.

    images: uint8 B×H×W×C. Works in pixel space before normalisation, as the reference does.
    """
    b, h, w, c = images.shape
    padded = images.new_zeros(b, h + 2 * PAD, w + 2 * PAD, c)
    padded[:, PAD:PAD + h, PAD:PAD + w] = images
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = dy[:, None] + ar_h  # B×H
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # B×W
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


class TrainBatches:
    """The augmented training batches of one run: `batch(step)` for any step, in any order.

    With `world_size` > 1 each rank gets its contiguous share of the same global batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size > len(images):
            raise ValueError(f"batch_size {batch_size} is larger than the training split ({len(images)} images)")
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = len(images) // batch_size  # a ragged last batch is dropped
        self.device = images.device
        self._epoch, self._perm = -1, None
        self._gen = torch.Generator(device=self.device)

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.seed, 1, epoch))
        return torch.randperm(len(self.images), generator=gen).to(self.device, non_blocking=True)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, self.permutation(epoch)
        b = self.batch_size
        self._gen.manual_seed(stream_seed(self.seed, 2, step))
        offsets = torch.randint(0, 2 * PAD + 1, (2, b), generator=self._gen, device=self.device)
        flip = torch.rand(b, generator=self._gen, device=self.device) < 0.5
        share = slice(self.rank * b // self.world_size, (self.rank + 1) * b // self.world_size)
        idx = self._perm[i * b:(i + 1) * b][share]
        images = crop_flip(self.images[idx], offsets[0, share], offsets[1, share], flip[share])
        return to_model_input(images), self.labels[idx]


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A distinct 63-bit seed for each (run seed, random stream, index)."""
    return ((seed * 1_000_003 + stream) * 1_000_000_007 + index) & 0x7FFF_FFFF_FFFF_FFFF
