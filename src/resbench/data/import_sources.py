"""What `resbench data import` reads: an ImageFolder tree (`SRC/train/<class>/*`, optionally
`SRC/test/<class>/*`) or an .npz (`x_train`, `y_train`, optionally `x_test`, `y_test`, `classes`),
as uint8 RGB images at the wanted size with their labels (`Source`).

Bounded before anything is decoded: the files are counted (at most `facts.MAX_IMAGES`), only
regular files are opened (a FIFO, a socket or a device is counted with the files that are no
images) and every image's header is checked (`decode.decode_file`); an .npz's members may unpack
to at most what an archive of its size holds (`archive.check_zip_size`), and each array's shape
and type are read from its header and checked against the bytes it holds, without unpickling
anything, the labels before any image is read. In a tree, a symbolic link is followed only to a
regular file inside SRC; a link out of SRC, to a folder or to nothing is skipped and counted.
Light (no torch).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resbench.console import progress
from resbench.data.decode import Decoded, at_size, decode_files, readable_extensions
from resbench.data.facts import MAX_CLASS_NAME, MAX_CLASSES, MAX_IMAGES
from resbench.data.fetch.archive import check_zip_size
from resbench.errors import DataError

MAX_ENTRIES = 4 * MAX_IMAGES  # folder entries a tree may hold in all (images and other files)
MAX_DEPTH = 32  # folders below a class folder: deeper would exhaust the recursion that lists them
MAX_NPZ_BYTES = 16 * 2**30  # of one .npz array, once read: more would not fit beside its resized copy
NPZ_MEMBERS = ("x_train", "y_train", "x_test", "y_test", "classes")


@dataclass
class Source:
    """The images of SRC, before the splits: train (and test, if SRC has one), with what was left out."""

    kind: str  # facts.SOURCE_KINDS
    classes: list[str]
    images: np.ndarray  # uint8 N x S x S x 3, in SRC's order (class by class, files by name)
    labels: np.ndarray  # int64 N
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    resized: int = 0
    converted: dict[str, int] = field(default_factory=dict)  # images per stored mode that was not RGB
    skipped_bad: list[str] = field(default_factory=list)  # "path: reason" of each unreadable image left out
    skipped_links: int = 0
    ignored_files: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- an ImageFolder tree

@dataclass
class Listing:
    """The image files of a tree, found without decoding any."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split -> (path, label), in order
    skipped_links: int = 0
    ignored_files: int = 0
    notes: list[str] = field(default_factory=list)
    entries: int = 0  # seen so far, bounded by MAX_ENTRIES


def list_tree(src: Path) -> Listing:
    """The classes (train's folder names, sorted) and image files of `src`, each split's in order."""
    root = Path(os.path.realpath(src))
    listing = Listing(root, [], {})
    splits = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in ("train", "test"):
            if entry.is_symlink() or not entry.is_dir():
                raise DataError(f"{src}/{entry.name} is {'a symbolic link' if entry.is_symlink() else 'no folder'}; "
                                f"resbench reads SRC/{entry.name}/<class>/ folders, and follows no link to a folder")
            splits[entry.name] = Path(entry.path)
        elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            listing.notes.append(f"ignored {src}/{entry.name}/ (only train/ and test/ are read; validation is held "
                                 "out from train/)")
        else:
            listing.ignored_files += 1
    if "train" not in splits:
        raise DataError(f"{src} has no train/ folder; an ImageFolder tree is SRC/train/<class>/<image> (and "
                        "optionally SRC/test/<class>/<image>), or pass an .npz file")
    extensions = readable_extensions()
    folders = class_folders(splits["train"], listing)
    listing.classes = sorted(folders)
    check_classes(listing.classes, src)
    label = {name: i for i, name in enumerate(listing.classes)}
    for split in (s for s in ("train", "test") if s in splits):
        found = folders if split == "train" else class_folders(splits[split], listing)
        if unknown := sorted(set(found) - set(listing.classes)):
            raise DataError(f"{src}/test/{unknown[0]} has no counterpart in {src}/train/ (test classes must be "
                            "train classes); rename or remove it")
        listing.files[split] = [(path, label[name]) for name in sorted(found)
                                for path in image_files(found[name], listing, extensions)]
    return listing


def class_folders(split: Path, listing: Listing) -> dict[str, Path]:
    """The class folders of one split by name; links among them are skipped, files beside them ignored."""
    folders = {}
    for entry in os.scandir(split):
        if entry.is_symlink():
            listing.skipped_links += 1
        elif entry.is_dir() and not entry.name.startswith("."):
            folders[entry.name] = Path(entry.path)
        else:
            listing.ignored_files += 1
    return folders


def check_classes(classes: list[str], src: Path) -> None:
    if len(classes) < 2:
        raise DataError(f"{src}/train holds {len(classes)} class folder{'s' * (len(classes) != 1)}"
                        f"{': ' + classes[0] if classes else ''}; a classifier needs 2 classes at least, one "
                        "folder of images each")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{src}/train holds {len(classes):,} class folders; resbench imports {MAX_CLASSES:,} at most")
    if long := [name for name in classes if len(name) > MAX_CLASS_NAME]:
        raise DataError(f"class folder name {long[0][:40]!r}... is longer than {MAX_CLASS_NAME} characters")


def image_files(folder: Path, listing: Listing, extensions: set[str], depth: int = 0) -> list[str]:
    """The image files below `folder` (subfolders too, MAX_DEPTH deep at most), sorted by name, as paths to open."""
    if depth > MAX_DEPTH:
        raise DataError(f"{folder} is {depth} folders below its class folder; resbench reads {MAX_DEPTH} levels of "
                        "subfolders at most: move its images up")
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        listing.entries += 1
        if listing.entries > MAX_ENTRIES:
            raise DataError(f"{listing.root} holds more than {MAX_ENTRIES:,} files; resbench imports "
                            f"{MAX_IMAGES:,} images at most")
        if entry.name.startswith("."):
            listing.ignored_files += 1
        elif entry.is_symlink():
            target = os.path.realpath(entry.path)
            inside = os.path.commonpath([target, listing.root]) == str(listing.root)
            if inside and os.path.isfile(target) and Path(entry.name).suffix.lower() in extensions:
                found.append(target)
            else:
                listing.skipped_links += 1
        elif entry.is_dir():
            found += image_files(Path(entry.path), listing, extensions, depth + 1)
        elif entry.is_file(follow_symlinks=False) and Path(entry.name).suffix.lower() in extensions:
            found.append(entry.path)
        else:  # no image by its name, or no regular file (a FIFO would block its reader forever): never opened
            listing.ignored_files += 1
    return found


def read_tree(src: Path, size: int, skip_bad: bool, workers: int) -> Source:
    """Every image of the tree decoded at `size` (in parallel), checked as `list_tree` describes."""
    listing = list_tree(src)
    everything = [item for split in listing.files.values() for item in split]
    if len(everything) > MAX_IMAGES:
        raise DataError(f"{src} holds {len(everything):,} images; resbench imports {MAX_IMAGES:,} at most")
    if not listing.files["train"]:
        raise DataError(f"{src}/train holds no images in its {len(listing.classes)} class folders (image files are "
                        f"those Pillow reads: .png, .jpg, ...)")
    source = Source("imagefolder", listing.classes, np.empty(0), np.empty(0), skipped_links=listing.skipped_links,
                    ignored_files=listing.ignored_files, notes=listing.notes)
    images = np.empty((len(everything), size, size, 3), np.uint8)
    kept = np.zeros(len(everything), bool)
    with progress(len(everything), f"decoding {src}", unit="img") as bar:
        decoded = decode_files([path for path, _ in everything], size, workers, bar.update)
        try:
            for i, result in enumerate(decoded):
                kept[i] = keep_decoded(result, everything[i][0], source, skip_bad)
                if kept[i]:
                    images[i] = np.frombuffer(result.pixels, np.uint8).reshape(size, size, 3)
        finally:
            decoded.close()
    labels = np.array([label for _, label in everything], np.int64)
    n_train = len(listing.files["train"])
    source.images, source.labels = images[:n_train][kept[:n_train]], labels[:n_train][kept[:n_train]]
    if "test" in listing.files:
        source.test_images, source.test_labels = images[n_train:][kept[n_train:]], labels[n_train:][kept[n_train:]]
        if not len(source.test_images):
            raise DataError(f"{src}/test holds no readable images; add some, or remove test/ to carve a test split "
                            "out of train/")
    check_every_class(source, f"{src}/train/")
    return source


def keep_decoded(result: Decoded, path: str, source: Source, skip_bad: bool) -> bool:
    """Whether to keep one decoded file; an unreadable one ends the import, or is counted with `skip_bad`."""
    if result.error is not None:
        if not skip_bad:
            raise DataError(f"cannot import {path}: it {result.error}; remove it, or pass --skip_bad to leave "
                            "unreadable images out")
        source.skipped_bad.append(f"{path}: {result.error}")
        return False
    source.resized += result.resized
    if result.mode != "RGB":
        source.converted[result.mode] = source.converted.get(result.mode, 0) + 1
    return True


def check_every_class(source: Source, where: str) -> None:
    """Every class needs a training image: a class without one could be neither learnt nor validated."""
    counts = np.bincount(source.labels, minlength=len(source.classes))
    if empty := [source.classes[c] for c in np.flatnonzero(counts == 0)]:
        shown = ", ".join(map(repr, empty[:3])) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise DataError(f"class {shown} has no{' readable' if source.skipped_bad else ''} training images "
                        f"({where}<class>/ or the .npz's y_train); add images, or remove the class")


# ---------------------------------------------------------------- an .npz

NPZ_FIX = "save it with numpy.savez (uncompressed), or pass an ImageFolder tree"
NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)  # a member damaged past its header


def read_npz(path: Path, size: int) -> Source:
    """x_train/y_train (and x_test/y_test, classes) of an .npz, each checked from its header first; the
    labels checked before the images are read."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip_size(archive, path.stat().st_size, path.name, NPZ_FIX)
            members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
            headers = {key: npy_header(archive, members[key], f"{path}: {key}")
                       for key in NPZ_MEMBERS if key in members}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not an .npz archive ({exc}); pass an ImageFolder tree or numpy.savez's "
                        "file") from None
    check_npz_headers(path, headers)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz_array(npz, key, path) for key in ("y_train", "y_test") if key in headers}
        for key, labels in arrays.items():
            check_npz_labels(labels, key, path)
        arrays.update({key: npz_array(npz, key, path) for key in ("x_train", "x_test", "classes") if key in headers})
    images, labels, resized = npz_split(arrays, "train", size)
    source = Source("npz", [], images, labels, resized=resized)
    if "x_test" in arrays:
        source.test_images, source.test_labels, resized = npz_split(arrays, "test", size)
        source.resized += resized
    if set(members) - set(NPZ_MEMBERS):
        source.notes.append(f"ignored the arrays {', '.join(sorted(set(members) - set(NPZ_MEMBERS)))} of {path}")
    source.classes = npz_classes(arrays, source, path)
    check_every_class(source, "")
    return source


def npz_array(npz: Any, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except NPZ_ERRORS as exc:
        raise DataError(f"{path}: {key} cannot be read ({' '.join(str(exc).split())}); {NPZ_FIX}") from None


def check_npz_labels(labels: np.ndarray, key: str, path: Path) -> None:
    """Labels from 0 to MAX_CLASSES - 1, checked in their own type (2**64 - 1 as int64 would be -1)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise DataError(f"{path}: {key} holds the label {bad}; labels are 0 .. classes - 1, at most "
                        f"{MAX_CLASSES - 1:,}")


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_header(archive: zipfile.ZipFile, member: str, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and type an array of the archive declares, read before any of its data, and checked
    against the bytes the member holds."""
    with archive.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in NPY_HEADER_READERS:
                raise ValueError(f"format {version[0]}.{version[1]}; resbench reads 1.0 and 2.0")
            shape, _, dtype = NPY_HEADER_READERS[version](f)
            if any(n < 0 for n in shape):
                raise ValueError(f"its header declares the shape {shape}, with a negative size")
            declared, held = math.prod(shape) * dtype.itemsize, archive.getinfo(member).file_size - f.tell()
        except NPZ_ERRORS as exc:
            raise DataError(f"{what} is not a valid .npy array ({' '.join(str(exc).split())})") from None
    if declared > held:
        raise DataError(f"{what}: its header declares {dtype} {shape}, {declared:,} bytes, but it holds {held:,}; "
                        "the file is truncated or damaged")
    return shape, dtype


def check_npz_headers(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Refuse, in one line, arrays missing, of another type, or too large, before any is read."""
    if missing := [key for key in ("x_train", "y_train") if key not in headers]:
        raise DataError(f"{path} holds no {' or '.join(missing)}; an .npz for resbench holds x_train, y_train "
                        "(and optionally x_test, y_test, classes)")
    if ("x_test" in headers) != ("y_test" in headers):
        raise DataError(f"{path} holds only one of x_test and y_test; give both or neither")
    for key, (shape, dtype) in headers.items():
        problem = npz_array_problem(key, shape, dtype)
        if problem:
            raise DataError(f"{path}: {key} is {dtype} {shape}; {problem}")
    for split in ("train", "test"):
        if f"x_{split}" in headers and headers[f"x_{split}"][0][0] != headers[f"y_{split}"][0][0]:
            raise DataError(f"{path}: x_{split} holds {headers[f'x_{split}'][0][0]:,} images but y_{split} "
                            f"{headers[f'y_{split}'][0][0]:,} labels")


def npz_array_problem(key: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    if key == "classes":
        ok = (dtype.kind == "U" and len(shape) == 1 and 2 <= shape[0] <= MAX_CLASSES
              and dtype.itemsize <= 4 * MAX_CLASS_NAME)
        return None if ok else f"expected 2 to {MAX_CLASSES:,} class names (a 1-D array of str)"
    if key.startswith("y_"):
        ok = dtype.kind in "iu" and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
        return None if ok else "expected one integer label per image, shape (N,) or (N, 1)"
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and 1 not in shape[1::2]
                                                             and 3 not in shape[1::2]):
        return ("expected uint8 images (N, H, W, 3) or (N, 3, H, W), or 1 channel, or grey (N, H, W); "
                "convert floats with (x * 255).round().astype(np.uint8)")
    if not 1 <= shape[0] <= MAX_IMAGES:
        return f"expected 1 to {MAX_IMAGES:,} images"
    if np.prod(shape, dtype=np.float64) > MAX_NPZ_BYTES:
        return f"larger than the {MAX_NPZ_BYTES // 2**30} GB resbench reads from an .npz (use an ImageFolder tree)"
    return None


def npz_split(arrays: dict[str, np.ndarray], split: str, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 N x size x size x 3 RGB images, int64 labels (checked: `check_npz_labels`), how many were resized)
    of one split."""
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
    if x.ndim == 3:
        x = x[..., None]
    elif x.shape[-1] not in (1, 3):  # NCHW (NHWC where the last axis could be channels)
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return np.ascontiguousarray(x), y.astype(np.int64), 0
    from PIL import Image

    resized = np.empty((len(x), size, size, 3), np.uint8)
    with progress(len(x), f"resizing {split}", unit="img") as bar:
        for i, image in enumerate(x):
            resized[i] = np.asarray(at_size(Image.fromarray(image), size)[0])
            bar.update()
    return resized, y.astype(np.int64), len(x)


def npz_classes(arrays: dict[str, np.ndarray], source: Source, path: Path) -> list[str]:
    """The class names (the .npz's `classes`, else "0", "1", ...), every label checked against them."""
    top = max(int(source.labels.max()), int(source.test_labels.max()) if source.test_labels is not None else 0)
    if "classes" in arrays:
        names = [str(name) for name in arrays["classes"]]
        if top >= len(names) or len(set(names)) != len(names) or not all(names):
            raise DataError(f"{path}: its {len(names)} classes must be distinct non-empty names, one per label "
                            f"0 .. {top} at least")
        return names
    if not 2 <= top + 1 <= MAX_CLASSES:
        raise DataError(f"{path}: the labels run 0 .. {top}; resbench imports 2 to {MAX_CLASSES:,} classes")
    return [str(c) for c in range(top + 1)]


def read_source(src: Path, size: int, skip_bad: bool, workers: int) -> Source:
    """SRC read whole: an ImageFolder tree (a folder) or an .npz file."""
    if src.is_dir():
        return read_tree(src, size, skip_bad, workers)
    if src.is_file():
        return read_npz(src, size)
    raise DataError(f"{src} does not exist; pass an ImageFolder tree (SRC/train/<class>/...) or an .npz file")
