"""Evaluation-only test sets: corrupted copies of a test split, and out-of-distribution (OOD) sets.

Prepared layouts, under ``<data_root>/<NAME>/`` (written by `resbench data download NAME`)::

    CIFAR10_C, CIFAR100_C, TinyImageNet200_C (corrupted test splits)
        labels.npy         int64 (5N,): the N test labels once per severity
        <corruption>.npy   uint8 (5N, S, S, 3): rows (s-1)N .. sN-1 are severity s
    SVHN (a test split only)
        test_images.npy    uint8 (N, 32, 32, 3)
        test_labels.npy    int64 (N,)

Built in, generated when asked for (nothing on disk), so the offline demo has both kinds:
``Noise`` (uniform random pixels, as many images as the in-distribution test split, at the
model's size) and ``Digits_C`` (the Digits_x32 test split under five corruptions at five
severities, with CIFAR-10-C's parameters for them).

Every set is read as uint8 images; a 64x64 set scored by a 32x32 model is downsampled exactly as
TinyImageNet200_x32 was prepared (`box_downsample`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from resbench.data.digits import digits_arrays
from resbench.data.facts import DATASETS, SEVERITIES, is_imported
from resbench.data.prepared import check_images, check_labels, load_npy, read_set
from resbench.data.recipes import cifar_c, tiny_c
from resbench.errors import DataFileError


@dataclass(frozen=True)
class EvalSet:
    name: str
    image_size: int
    num_classes: int
    corruptions: tuple[str, ...] = ()  # a corrupted test set: one file per corruption
    benchmark: tuple[str, ...] = ()  # the corruptions its mean figures (mCA) average
    generated: bool = False  # built in: made when asked for, never prepared on disk


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * c + mean


# Digits_C: the noise, contrast and brightness corruptions of CIFAR-10-C (Hendrycks & Dietterich's
# make_cifar_c.py parameters per severity), applied to images in [0, 1].
DIGITS_CORRUPTIONS: dict[str, tuple[tuple[float, ...], Callable]] = {
    "gaussian_noise": ((0.04, 0.06, 0.08, 0.09, 0.10), lambda x, c, rng: x + rng.normal(0.0, c, x.shape)),
    "shot_noise": ((500, 250, 100, 75, 50), lambda x, c, rng: rng.poisson(x * c) / c),
    "impulse_noise": ((0.01, 0.02, 0.03, 0.05, 0.07),
                      lambda x, c, rng: np.where(rng.random(x.shape) < c, rng.random(x.shape) < 0.5, x)),
    "contrast": ((0.75, 0.5, 0.4, 0.3, 0.15), _contrast),
    "brightness": ((0.05, 0.1, 0.15, 0.2, 0.3), lambda x, c, rng: x + c),
}

EVAL_SETS: dict[str, EvalSet] = {
    spec.name: spec
    for spec in (
        EvalSet("CIFAR10_C", 32, 10, cifar_c.CORRUPTIONS, cifar_c.BENCHMARK),
        EvalSet("CIFAR100_C", 32, 100, cifar_c.CORRUPTIONS, cifar_c.BENCHMARK),
        EvalSet("TinyImageNet200_C", 64, 200, tiny_c.CORRUPTIONS, tiny_c.CORRUPTIONS),
        EvalSet("SVHN", 32, 10),
        EvalSet("Noise", 0, 0, generated=True),
        EvalSet("Digits_C", 32, 10, tuple(DIGITS_CORRUPTIONS), tuple(DIGITS_CORRUPTIONS), generated=True),
    )
}
TEST_ONLY_FILES = ("test_images.npy", "test_labels.npy")


def image_size(name: str) -> int:
    """The stored image size of a training dataset or an evaluation set."""
    return DATASETS[name].image_size if name in DATASETS else EVAL_SETS[name].image_size


# ---------------------------------------------------------------- prepared files and their checks

def inspect_prepared(name: str, data_root: str | Path) -> dict[str, int]:
    """The image count of a prepared evaluation set after the checks eval makes; DataFileError if unusable."""
    spec, folder = EVAL_SETS[name], Path(data_root) / name
    wanted = ["labels.npy", *(f"{c}.npy" for c in spec.corruptions)] if spec.corruptions else list(TEST_ONLY_FILES)
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataFileError(f"dataset {name} is not prepared: {folder} lacks {shown}; "
                            f"run `resbench data download {name} --data_root {data_root}`")
    if not spec.corruptions:
        images = load_npy(folder / "test_images.npy", "r")
        check_images(folder / "test_images.npy", images, spec.image_size)
        labels = load_npy(folder / "test_labels.npy", "r")
        check_labels(folder / "test_labels.npy", labels, len(images), spec.num_classes)
        return {"test": len(images)}
    labels = corrupted_labels(folder / "labels.npy", spec)
    for corruption in spec.corruptions:
        path = folder / f"{corruption}.npy"
        images = load_npy(path, "r")
        check_images(path, images, spec.image_size)
        if len(images) != len(labels):
            raise DataFileError(f"{path} holds {len(images)} images but labels.npy {len(labels)}; prepare it again")
    return {"test": len(labels) * len(spec.corruptions)}


def corrupted_labels(path: Path, spec: EvalSet) -> np.ndarray:
    labels = load_npy(path, "r")
    check_labels(path, labels, len(labels), spec.num_classes)
    if not len(labels) or len(labels) % SEVERITIES:
        raise DataFileError(f"{path} holds {len(labels)} labels, not {SEVERITIES} equal severity blocks; "
                            "prepare it again")
    return labels


# ---------------------------------------------------------------- reading the sets for evaluation

def corrupted_set(name: str, data_root: str | Path) -> tuple[np.ndarray, Iterator[tuple[str, np.ndarray]]]:
    """(labels of all 5 severities, (corruption, uint8 images) one corruption at a time)."""
    spec = EVAL_SETS[name]
    if name == "Digits_C":
        test_images, test_labels = digits_arrays()[2:]
        return np.tile(test_labels, SEVERITIES), ((c, digits_corrupted(test_images, c)) for c in spec.corruptions)
    inspect_prepared(name, data_root)
    folder = Path(data_root) / name
    labels = np.asarray(load_npy(folder / "labels.npy"), dtype=np.int64)
    return labels, ((c, load_npy(folder / f"{c}.npy", "r")) for c in spec.corruptions)


def digits_corrupted(images: np.ndarray, corruption: str) -> np.ndarray:
    """The five severities of one corruption of uint8 images, stacked severity after severity (seeded)."""
    params, corrupt = DIGITS_CORRUPTIONS[corruption]
    x = images.astype(np.float64) / 255.0
    out = []
    for severity, c in enumerate(params, 1):
        rng = np.random.default_rng([severity, sorted(DIGITS_CORRUPTIONS).index(corruption)])
        out.append((np.clip(corrupt(x, c, rng), 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return np.concatenate(out)


def ood_chunks(name: str, data_root: str | Path, model_size: int, id_count: int) -> tuple[int, Iterator[np.ndarray]]:
    """(image count, uint8 image arrays) of an OOD set, in pieces small enough to move to the device.

    A training dataset (built in or imported) contributes its test split; a corrupted set the highest severity of
    every corruption; ``Noise`` `id_count` images of uniform random pixels at the model's size.
    """
    if name == "Noise":
        rng = np.random.default_rng(0)
        return id_count, iter([rng.integers(0, 256, (id_count, model_size, model_size, 3), dtype=np.uint8)])
    if name in DATASETS or is_imported(name, data_root):  # a training set (built in or imported): its test split
        images = read_set(name, data_root, mmap_mode="r")[1][2]
        return len(images), iter([images])
    spec = EVAL_SETS[name]
    if not spec.corruptions:
        inspect_prepared(name, data_root)
        images = load_npy(Path(data_root) / name / "test_images.npy", "r")
        return len(images), iter([images])
    labels, files = corrupted_set(name, data_root)
    n = len(labels) // SEVERITIES
    return n * len(spec.corruptions), (images[(SEVERITIES - 1) * n:] for _, images in files)


# ---------------------------------------------------------------- image size

def box_downsample(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images at half their size, bit-identical to PIL's ``resize(..., Image.BOX)``.

    For a factor of 2 PIL's BOX filter is two passes, horizontal then vertical, each the mean of
    two neighbours rounded half up in integer arithmetic; this is that, on the device, for a
    whole batch (tests/data/test_evalsets.py checks it against PIL).
    """
    x = images.to(torch.int16)
    x = (x[:, :, 0::2] + x[:, :, 1::2] + 1) >> 1
    x = (x[:, 0::2] + x[:, 1::2] + 1) >> 1
    return x.to(torch.uint8)


def at_model_size(images: torch.Tensor, model_size: int, name: str) -> torch.Tensor:
    """Images as the model takes them: as they are, or 64x64 halved for a 32x32 model."""
    size = images.shape[1]
    if size == model_size:
        return images
    if size == 2 * model_size:
        return box_downsample(images)
    raise DataFileError(f"{name} images are {size}x{size}; a model of {model_size}x{model_size} images "
                        "cannot score them")
