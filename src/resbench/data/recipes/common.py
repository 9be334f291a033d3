"""What every reader returns: the prepared arrays of one dataset, at each requested image size."""

from __future__ import annotations

import io
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from resbench.errors import DataError

#: Arrays of one prepared dataset, keyed by file name (`resbench.data.facts.PREPARED_FILES` for the
#: training sets; a corrupted test set has one file per corruption). A mapping, so a reader of a
#: multi-GB set can return a `LazySplits` that makes each array only when it is written, and an
#: array larger than memory can be a `StreamedArray` (bytes: a file written as they are).
Splits = Mapping[str, Any]
#: A reader turns one verified archive (and the archives its recipe `needs`) into the prepared
#: arrays at each requested image size: ``read(archive, sizes, *needed)``; the reader of archives
#: placed by hand (`recipes.Placed`) gets the paths of the variant found: ``read(archives, sizes)``.
Reader = Callable[..., dict[int, Splits]]


@dataclass(frozen=True, eq=False)  # hashed by identity: a Recipe is a dict key, and `variants` is a dict
class Placed:
    """Archives that no URL serves (downsampled ImageNet's need an image-net.org account): the user places
    one variant's files, whole, in <data_root>/downloads/ (or a --mirror holds them)."""

    variants: dict[str, tuple[str, ...]]  # variant -> the official names of its archives, in the reader's order
    where: str  # where a person gets them


@dataclass(frozen=True)
class StreamedArray:
    """An array too large to hold (ImageNet1k_x64's 15.7 GB of training images), written to its .npy piece by
    piece as `pieces()` makes them: its header first, from the shape known ahead, then the rows in order.

    `pieces()` checks its source as it goes and raises DataError where it holds other than `shape[0]` rows;
    the writer checks the count again (`store.write_streamed`).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    pieces: Callable[[], Iterator[np.ndarray]]


class LazySplits(Mapping):
    """Prepared files made one at a time, when the preparation asks for each to write it.

    CIFAR-10-C is 2.9 GB and Tiny-ImageNet-C decodes to 9 GB: held at once they would not fit
    in memory, one file at a time they do. ``keep_open`` (an open archive the makers read from)
    is closed when the mapping is released.
    """

    def __init__(self, makers: dict[str, Callable[[], np.ndarray]], keep_open: Any = None):
        self._makers = makers
        if keep_open is not None:
            weakref.finalize(self, keep_open.close)

    def __getitem__(self, filename: str) -> np.ndarray:
        return self._makers[filename]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def npy_from_bytes(data: bytes, what: str) -> np.ndarray:
    """The array in the bytes of a .npy file, without copying them and without trusting its header.

    The shape the header declares is checked against the bytes that are really there before an
    array is made, so a crafted header cannot make us allocate more than the member's size; object
    (pickled) and Fortran-ordered arrays are refused.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = read_header(stream)
    except ValueError as exc:
        raise DataError(f"{what} is not a valid .npy file ({exc}); is the archive genuine?") from None
    if dtype.kind not in "biuf" or fortran_order:
        raise DataError(f"{what} holds {'Fortran-ordered ' if fortran_order else ''}{dtype} data, "
                        "not a plain numeric array; is the archive genuine?")
    expected = dtype.itemsize * int(np.prod(shape, dtype=object))
    if len(data) - stream.tell() != expected:
        raise DataError(f"{what} declares {dtype} {shape} ({expected} bytes) but holds "
                        f"{len(data) - stream.tell()} bytes; is the archive complete?")
    try:  # (the byte count matches shapes no array has: two negative dimensions, or 0 x 2^62 x 2^62)
        return np.frombuffer(data, dtype=dtype, offset=stream.tell()).reshape(shape)
    except ValueError:
        raise DataError(f"{what} declares the shape {shape}, which no array has; is the archive genuine?") from None


def severity_blocks(labels: np.ndarray, severities: int, what: str) -> int:
    """The images per severity of a corrupted test set, whose labels repeat once per severity."""
    n, rest = divmod(len(labels), severities)
    if not n or rest or any(not np.array_equal(labels[:n], labels[s * n:(s + 1) * n]) for s in range(1, severities)):
        raise DataError(f"{what} does not hold the same labels for each of the {severities} severities; "
                        "is the archive genuine?")
    return n


def checked_sizes(sizes: Sequence[int], supported: int, what: str) -> None:
    if list(sizes) != [supported]:
        raise ValueError(f"{what} images are {supported}x{supported}, not {list(sizes)}")
