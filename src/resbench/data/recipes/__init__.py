"""Dataset recipes: for each prepared dataset, the official archive it comes from and its reader.

A recipe is all a new dataset needs: a `Source` (file name, URL, published MD5, size), or the names of
archives the user places by hand (`Placed`), and a reader that turns the verified archives into the
prepared arrays. Downloading, verification, safe archive access, locking and the atomic write of the
prepared folder are shared (`resbench.data.fetch`). Image sizes and class counts are the trainer's, in
`resbench.data.facts.DATASETS`.

Prepared layout (what the trainer reads, and what users of the reference already have)::

    <data_root>/<NAME>/train_images.npy   uint8, N x S x S x 3 (NHWC, RGB)
    <data_root>/<NAME>/train_labels.npy   int64, N (class ids)
    <data_root>/<NAME>/test_images.npy
    <data_root>/<NAME>/test_labels.npy

The evaluation-only sets (corrupted test splits, SVHN) have their own layouts and checks, in
`resbench.data.evalsets`. Where each published MD5 comes from is noted beside its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from resbench.data.fetch.download import Source
from resbench.data.recipes import cifar, cifar_c, imagenet, svhn, tiny_c, tinyimagenet
from resbench.data.recipes.common import Placed, Reader


@dataclass(frozen=True)
class Recipe:
    """How one prepared dataset is made. Datasets sharing a recipe (both TinyImageNet sizes)
    are prepared from one download and one decode."""

    source: Source | None  # None: the archives are placed by hand (`placed`)
    read: Reader
    # The datasets whose archives the reader reads too, passed after the sizes (Tiny-ImageNet-C
    # numbers its classes by wnids.txt of the TinyImageNet archive).
    needs: tuple[str, ...] = ()
    placed: Placed | None = None

    @property
    def lock_name(self) -> str:
        """The archive whose name its preparations take turns under (`prepare.preparation_lock`)."""
        return self.source.filename if self.source else next(iter(self.placed.variants.values()))[0]


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

# Hendrycks & Dietterich's corruption benchmarks on Zenodo. MD5s as the Zenodo records list them,
# also in torchvision-style loaders (e.g. torch-uncertainty's CIFAR10C/CIFAR100C/TinyImageNetC).
# Sizes (for a size check): CIFAR-10-C.tar 2,918,471,680 bytes, CIFAR-100-C.tar 2,918,473,216,
# Tiny-ImageNet-C.tar 1,794,775,040.
CIFAR10_C = Recipe(
    Source("CIFAR-10-C.tar", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
           "56bf5dcef84df0e2308c6dcbcbbd8499"),
    cifar_c.reader("CIFAR-10-C", 10),
)
CIFAR100_C = Recipe(
    Source("CIFAR-100-C.tar", "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1",
           "11f0ed0f1191edbf9fa23466ae6021d3"),
    cifar_c.reader("CIFAR-100-C", 100),
)
TINYIMAGENET_C = Recipe(
    Source("Tiny-ImageNet-C.tar", "https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar?download=1",
           "f9c9a9dbdc11469f0b850190f7ad8be1"),
    tiny_c.read,
    needs=("TinyImageNet200_x64",),
)
# Downsampled ImageNet: no URL serves it, and image-net.org publishes no checksum of it (recipes/imagenet.py).
IMAGENET32 = Recipe(None, imagenet.reader("ImageNet1k_x32"), placed=imagenet.placed(32))
IMAGENET64 = Recipe(None, imagenet.reader("ImageNet1k_x64"), placed=imagenet.placed(64))
# SVHN's test split; URL and MD5 as in torchvision's datasets.SVHN.split_list["test"].
SVHN = Recipe(
    Source("test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
           "eb5a983be6a315427106f1b164d9cef3"),
    svhn.read,
)

#: The recipe of each downloadable dataset. Module-level so that tests (or a user with a
#: re-packed archive) can substitute other sources; the official values are the defaults.
RECIPES: dict[str, Recipe] = {
    "CIFAR10_x32": CIFAR10,
    "CIFAR100_x32": CIFAR100,
    "TinyImageNet200_x32": TINYIMAGENET,
    "TinyImageNet200_x64": TINYIMAGENET,
    "ImageNet1k_x32": IMAGENET32,
    "ImageNet1k_x64": IMAGENET64,
    "CIFAR10_C": CIFAR10_C,
    "CIFAR100_C": CIFAR100_C,
    "TinyImageNet200_C": TINYIMAGENET_C,
    "SVHN": SVHN,
}
