"""Dataset recipes: for each prepared dataset, the official archive it comes from and its reader.

A recipe is all a new dataset needs: a `Source` (file name, URL, published MD5, size) and a reader that
turns the verified archive into the prepared arrays. Downloading, verification, safe archive
access, locking and the atomic write of the prepared folder are shared (`download`, `archive`,
`fetch`). Image sizes and class counts are the trainer's, in `resbench.data.DATASETS`.

Prepared layout (what the trainer reads, and what users of the reference already have)::

    <data_root>/<NAME>/train_images.npy   uint8, N x S x S x 3 (NHWC, RGB)
    <data_root>/<NAME>/train_labels.npy   int64, N (class ids)
    <data_root>/<NAME>/test_images.npy
    <data_root>/<NAME>/test_labels.npy
"""

from __future__ import annotations

from dataclasses import dataclass

from ..download import Source
from . import cifar, tinyimagenet
from .common import Reader


@dataclass(frozen=True)
class Recipe:
    """How one prepared dataset is made. Datasets sharing a recipe (both TinyImageNet sizes)
    are prepared from one download and one decode."""

    source: Source
    read: Reader


CIFAR10 = Recipe(
    Source("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
           "c58f30108f718f92721af3b95e74349a", 170_498_071),
    cifar.reader("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
)
CIFAR100 = Recipe(
    Source("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
           "eb9058c3a382ffc7106e4002c42a8d85", 169_001_437),
    cifar.reader("cifar-100-python", ["train"], "test", b"fine_labels"),
)
TINYIMAGENET = Recipe(
    Source("tiny-imagenet-200.zip", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
           "90528d7ca1a48142e341f4ef8d21d0de", 248_100_043),
    tinyimagenet.read,
)

#: The recipe of each downloadable dataset. Module-level so that tests (or a user with a
#: re-packed archive) can substitute other sources; the official values are the defaults.
RECIPES: dict[str, Recipe] = {
    "CIFAR10_x32": CIFAR10,
    "CIFAR100_x32": CIFAR100,
    "TinyImageNet200_x32": TINYIMAGENET,
    "TinyImageNet200_x64": TINYIMAGENET,
}
