"""The prepared datasets: uint8 NHWC arrays in <data_root>/<name>/{train,test}_{images,labels}.npy,
checked before use and loaded onto the training device as one tensor per split.

Every split can live on the device whole, so that a batch is a slice and an augmentation is one
gather (`data.batches`); each file's header is checked before its data is read, so that a damaged or
foreign file costs one line, not the machine's memory. The files are memory-mapped and copied to the
device in chunks: a 15.7 GB training set reaches a GPU without a full copy in host memory. Whether
the training images go to the device or stream from their file is `device.holding`'s choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from resbench.data.digits import digits_arrays
from resbench.data.facts import DEMO_DATASET, PREPARED_FILES, DatasetSpec, dataset_spec, size_problem, split_sizes
from resbench.errors import DataFileError, ResbenchError

T = TypeVar("T")


@dataclass
class Splits:
    train_images: torch.Tensor  # uint8, N×H×W×3
    train_labels: torch.Tensor  # int64, N
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    spec: DatasetSpec  # the facts the arrays were read with (an imported set's, of the same import)

    def sizes(self) -> dict[str, int]:
        """Images per split, as a run records them (summary.json's `splits`): what `table` and `compare`
        check against the official sizes before setting published figures beside the run's."""
        return {"train": len(self.train_labels), "val": len(self.val_labels), "test": len(self.test_labels)}


def prepared_dir(name: str, data_root: str | Path) -> Path:
    return Path(data_root) / name


def missing_prepared_files(name: str, data_root: str | Path) -> list[Path]:
    if name == DEMO_DATASET:
        return []
    folder = prepared_dir(name, data_root)
    return [folder / f for f in PREPARED_FILES if not (folder / f).is_file()]


def load_splits(name: str, data_root: str | Path, device: torch.device | str = "cpu") -> Splits:
    """Train/val/test of `name`, with the recipe's split of the training file: labels and the
    evaluation splits on `device`, the training images as a CPU tensor over their memory-mapped file
    (nothing of them read yet: `device.holding` copies them to the device, or streams them); the facts
    and the arrays all of one import (`read_set`).

    Where validation is the test set (`DatasetSpec.val_is_test`), the two splits are one tensor.
    """
    # copy-on-write: writable arrays (torch warns of read-only ones) that are never written
    spec, (train_x, train_y, test_x, test_y) = read_set(name, data_root, mmap_mode="c")
    n = spec.num_train
    test = to_tensor(test_x, device), to_tensor(test_y, device).long()
    val = test if spec.val_is_test else (to_tensor(train_x[n:], device), to_tensor(train_y[n:], device).long())
    return Splits(torch.from_numpy(train_x[:n]), to_tensor(train_y[:n], device).long(), *val, *test, spec)


# Bytes copied to the device at a time: a chunk in host memory, not the whole file.
CHUNK_BYTES = 64 * 2**20


def nonstandard_sizes(spec: DatasetSpec, data_root: str | Path) -> str | None:
    """How the prepared built-in set of `spec` differs in size from the official one (`facts.size_problem`),
    or None: where it does not, is imported, or is not prepared yet (train then fetches the official one)."""
    if spec.imported or spec.name == DEMO_DATASET or missing_prepared_files(spec.name, data_root):
        return None
    train_x, _, test_x, _ = read_prepared(spec, data_root, mmap_mode="r")
    return size_problem(spec, split_sizes(spec, len(train_x), len(test_x)))


def read_set(name: str, data_root: str | Path, mmap_mode: str | None = None) -> tuple[DatasetSpec, tuple]:
    """A set's facts and its four arrays, checked, all of one import (`same_folder`)."""
    if name == DEMO_DATASET:
        return dataset_spec(name), digits_arrays()

    def read() -> tuple[DatasetSpec, tuple]:
        spec = dataset_spec(name, data_root)
        return spec, read_prepared(spec, data_root, mmap_mode)

    return same_folder(prepared_dir(name, data_root), read)


REREADS = 3


def same_folder(folder: Path, read: Callable[[], T]) -> T:
    """`read()` of files in `folder`, all from the one folder that stood there when it began.

    A re-import replaces a set's folder whole (`data.imported`): a read that finds the name leading to
    another folder at its end (or that failed, and finds so) may have mixed two imports, and is made
    again. The open folder keeps its inode from being reused meanwhile, so the comparison is sound."""
    for _ in range(REREADS):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return read()  # no folder there: the read names what is missing
        try:
            try:
                result = read()
            except (ResbenchError, ValueError):  # (a file gone with the folder it was in: FactsError, DataFileError)
                if is_still(fd, folder):
                    raise
                continue
            if is_still(fd, folder):
                return result
        finally:
            os.close(fd)
    raise DataFileError(f"{folder} was replaced while it was read, {REREADS} times (imported again meanwhile?); "
                        "run again when the import is done")


def is_still(fd: int, folder: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(folder))
    except OSError:
        return False


def to_tensor(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A contiguous tensor on `device`, in native byte order, filled from `array` (memory-mapped or not)
    CHUNK_BYTES at a time.

    torch.from_numpy refuses big-endian arrays (e.g. `>i8` labels written on another machine or by
    another tool); they are valid data, so they are converted instead of rejected.
    """
    native = np.dtype(array.dtype).newbyteorder("=")
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, native)).dtype, device=device)
    rows = max(1, CHUNK_BYTES // max(1, native.itemsize * math.prod(array.shape[1:])))
    for start in range(0, len(array), rows):
        out[start:start + rows].copy_(torch.from_numpy(np.ascontiguousarray(array[start:start + rows], dtype=native)))
    return out


def read_prepared(spec: DatasetSpec, data_root: str | Path, mmap_mode: str | None = None) -> tuple[np.ndarray, ...]:
    """Read and check `<data_root>/<name>/{train,test}_{images,labels}.npy` (the reference layout).

    `mmap_mode="r"` checks a dataset without reading the images (as `resbench data list` does).
    These are all the checks the trainer makes, so `data list`, `data download` and `train` agree
    on whether a dataset is usable.
    """
    missing = missing_prepared_files(spec.name, data_root)
    if missing:
        how = "import" if spec.imported else "download"
        raise DataFileError(
            f"dataset {spec.name} is not prepared: missing {', '.join(str(p) for p in missing)}; "
            f"run `resbench data {how} {spec.name}{' SRC' if spec.imported else ''} --data_root {data_root}` "
            f"{'again' if spec.imported else 'or place the files there'}"
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
    """The training file must hold more than `num_train` images, or the validation split is empty; where
    validation is the test set, exactly `num_train` (the whole file trains: another count is another set)."""
    n = spec.num_train
    if spec.val_is_test:
        if count != n:
            raise DataFileError(f"{path} holds {count:,} images; {spec.name} has {n:,} (its whole training set); "
                                "prepare it again")
    elif count <= n:
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
