"""`resbench data import NAME SRC`: a researcher's own images prepared as the built-in sets are.

The result is `<data_root>/<NAME>/{train,test}_{images,labels}.npy` (uint8 NHWC, int64 labels), the
training file holding the training split first and the held-out validation split after it, as
the loader expects (`prepared.load_splits`), and `dataset.json`, its facts (`facts.ImportedFacts`).
The validation split is stratified and seeded (`--split_seed`, recorded); where SRC has no test
split one is carved out of train first, the same way.

Nothing is written until all of SRC has been read and split; the set is then written whole into a
marked temporary folder and swapped in place of the old one, under a lock of its own, so that a
reader sees one import or the other, never a mix (`prepared.same_folder`). A re-import replaces only
what an import wrote: a folder without the import's mark (`.resbench-import`, the digest of its
dataset.json), or holding any other file, is refused; what a killed import left is removed by
its exact name and mark. Light (no torch), so that the decoding children can be forked (`decode`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resbench.console import log, printable
from resbench.data import facts
from resbench.data.decode import RESIZE_NAME, available_cores, decoding_processes
from resbench.data.facts import FACTS_FILE, PREPARED_FILES, ImportedFacts
from resbench.data.fetch import prepare, store
from resbench.data.import_sources import Source, read_source
from resbench.data.recipes import RECIPES
from resbench.errors import DataError
from resbench.files import RANDOM_PART, read_bounded, remove_stale, unmark
from resbench.settings.config import TrainConfig
from resbench.version import __version__

IMPORT_FILES = (*PREPARED_FILES, FACTS_FILE)  # the set an import writes, dataset.json last
IMPORT_MARK = ".resbench-import"  # then this: the import's mark of ownership (`is_own_import`)
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImportRequest:
    """What `resbench data import` was asked for."""

    name: str
    src: str
    data_root: str = "./data"
    image_size: int = 32
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION  # only where SRC has no test split
    split_seed: int = DEFAULT_SPLIT_SEED
    skip_bad: bool = False
    workers: int | None = None  # decoding processes; None: one per available core


def reserved_names() -> set[str]:
    """Names an imported set cannot take: every built-in training and evaluation set's, and the
    data root's downloads folder (tests/data/test_import.py checks this against `evalsets.EVAL_SETS`)."""
    evaluation = {spec.corrupted for spec in facts.DATASETS.values() if spec.corrupted}
    ood = {name for spec in facts.DATASETS.values() for name in spec.natural_ood}
    return {*facts.DATASETS, *RECIPES, *evaluation, *ood, prepare.DOWNLOADS_DIR}


def check_name(name: str) -> str:
    """Refuse, in one line, a NAME that is no plain folder name or that a built-in set already has."""
    if not facts.is_valid_name(name):
        raise DataError(f"dataset name {name!r} is not allowed: use 1 to 64 letters, digits, _, - and . "
                        "(not first), e.g. MySet_x32")
    taken = {reserved.lower(): reserved for reserved in reserved_names()}
    if name.lower() in taken:
        raise DataError(f"dataset name {name} is taken by the built-in set {taken[name.lower()]}; choose another NAME")
    return name


# ---------------------------------------------------------------- the splits

def held_out_counts(counts: np.ndarray, fraction: float) -> np.ndarray:
    """How many images of each class to hold out: the floor or ceiling of its share, the largest
    remainders rounded up, round(total x fraction) (at least 1) in all, and never a class's last
    image (a class of one image stays in training)."""
    room = np.maximum(counts - 1, 0)
    target = min(max(1, math.floor(counts.sum() * fraction + 0.5)), int(room.sum()))
    quota = counts * fraction
    held = np.minimum(np.floor(quota).astype(np.int64), room)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while held.sum() < target:
        for c in order[held[order] < room[order]][:target - held.sum()]:
            held[c] += 1
    return held


def stratified_split(labels: np.ndarray, num_classes: int, fraction: float, seed: int, stream: int,
                     what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices of `labels`, each in ascending order: `held_out_counts` of each
    class, drawn at random by a generator seeded with (seed, stream)."""
    counts = np.bincount(labels, minlength=num_classes)
    held_counts = held_out_counts(counts, fraction)
    if not held_counts.sum():
        raise DataError(f"every class has a single training image: none can be held out for the {what} split; "
                        "add images")
    rng = np.random.default_rng([seed, stream])
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
    held = np.concatenate([rng.permutation(members)[:n] for members, n in zip(by_class, held_counts)])
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class ImportSplits:
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    carved: dict[str, float]


def split_source(source: Source, request: ImportRequest) -> ImportSplits:
    """Train, validation and test of SRC: the test split SRC's own or carved out of train, then the
    validation split held out of what is left."""
    images, labels, k = source.images, source.labels, len(source.classes)
    test_images, test_labels, carved = source.test_images, source.test_labels, {"val": request.val_fraction}
    if test_images is None:
        kept, test = stratified_split(labels, k, request.test_fraction, request.split_seed, 1, "test")
        test_images, test_labels, images, labels = images[test], labels[test], images[kept], labels[kept]
        carved["test"] = request.test_fraction
    kept, val = stratified_split(labels, k, request.val_fraction, request.split_seed, 2, "validation")
    return ImportSplits(images[kept], labels[kept], images[val], labels[val], test_images, test_labels, carved)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1], summed in float64 chunks."""
    total, squares = np.zeros(3), np.zeros(3)
    for start in range(0, len(images), 1024):
        chunk = images[start:start + 1024].reshape(-1, 3).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    pixels = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean ** 2, 0.0))
    return [round(float(m) / 255, 6) for m in mean], [round(float(s) / 255, 6) for s in std]


def facts_of(splits: ImportSplits, source: Source, request: ImportRequest) -> ImportedFacts:
    mean, std = channel_stats(splits.train_images)
    k = len(source.classes)
    counts = {split: tuple(int(n) for n in np.bincount(getattr(splits, f"{split}_labels"), minlength=k))
              for split in facts.SPLITS}
    return ImportedFacts(
        classes=tuple(source.classes), image_size=request.image_size, num_train=len(splits.train_labels),
        num_val=len(splits.val_labels), num_test=len(splits.test_labels), class_counts=counts,
        mean=tuple(mean), std=tuple(std), source=str(request.src), source_kind=source.kind, resize=RESIZE_NAME,
        resized=source.resized, split_seed=request.split_seed, carved=splits.carved,
        skipped_bad=len(source.skipped_bad), skipped_links=source.skipped_links,
        ignored_files=source.ignored_files, resbench=__version__)


# ---------------------------------------------------------------- writing

def import_mark(facts_text: bytes) -> bytes:
    """What IMPORT_MARK holds: the SHA-256 of the dataset.json written beside it."""
    return hashlib.sha256(facts_text).hexdigest().encode() + b"\n"


def is_own_import(folder: str | Path) -> bool:
    """Whether `folder` is an import's: its IMPORT_MARK, a regular file, holds the digest of its dataset.json."""
    try:
        mark = read_bounded(Path(folder) / IMPORT_MARK, 100, follow_links=False)
        return mark == import_mark(read_bounded(Path(folder) / FACTS_FILE, facts.MAX_FACTS_BYTES, follow_links=False))
    except OSError:
        return False


def check_own_folder(target: Path) -> None:
    """Refuse an existing dataset folder that an import did not write (no IMPORT_MARK of its dataset.json:
    the four files' names and a dataset.json prove nothing), or that holds anything else: a re-import
    replaces the folder whole."""
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        raise DataError(f"{target} is {'a symbolic link' if target.is_symlink() else 'not a folder'}; resbench "
                        "imports only into a folder of its own: move it away, or choose another NAME")
    if not is_own_import(target):
        raise DataError(f"{target} holds a dataset that `resbench data import` did not write (no {IMPORT_MARK} "
                        f"matching its {FACTS_FILE}), or one whose import was interrupted; move it away, or choose "
                        "another NAME")
    if foreign := sorted(entry.name for entry in os.scandir(target) if entry.name not in (*IMPORT_FILES, IMPORT_MARK)):
        raise DataError(f"{target} holds files `resbench data import` did not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); it replaces only its own: move them away, or choose "
                        "another NAME")


def remove_stale_imports(root: Path, name: str) -> None:
    """Remove what a killed import of `name` left, each by its exact name and the mark it was made with:
    a temporary folder (`.<NAME>.tmp-XXXXXXXX`) and a replaced set (`.<NAME>.old-XXXXXXXX`). Call it under
    the import's lock."""
    store.remove_stale_dataset_temporaries(root, name)
    remove_stale(root, re.compile(re.escape(f".{name}.old-") + RANDOM_PART), folders=True, owned=is_own_import)


def replace_folder(root: Path, name: str, new: Path) -> Path:
    """Put the complete set `new` in place of <root>/<NAME> whole: a reader holding the old folder reads it
    to the end (`prepared.same_folder` notices the change and reads again), none sees a mix of two imports."""
    target = root / name
    if not os.path.lexists(target):
        os.replace(new, target)
        return target
    old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
    os.replace(target, old)  # (over mkdtemp's empty folder: a name no one else holds)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_imported(request: ImportRequest, splits: ImportSplits, found: ImportedFacts) -> Path:
    """The prepared files, dataset.json and the import's mark, written whole into a temporary folder that
    then replaces the set's folder, under the import's lock."""
    root = Path(request.data_root)
    files = {"train_images.npy": np.concatenate([splits.train_images, splits.val_images]),
             "train_labels.npy": np.concatenate([splits.train_labels, splits.val_labels]),
             "test_images.npy": splits.test_images, "test_labels.npy": splits.test_labels,
             FACTS_FILE: facts.facts_json(found)}
    assert tuple(files) == IMPORT_FILES
    files[IMPORT_MARK] = import_mark(files[FACTS_FILE])
    with prepare.undo_new_folders(root):
        prepare.make_root(root)
        with prepare.preparation_lock(root, f"{request.name}.import", [request.name]):
            remove_stale_imports(root, request.name)
            check_own_folder(root / request.name)
            with store.write_errors_named(root, request.name):
                new = store.write_temporary(root, request.name, files)
                try:
                    unmark(new)
                    return replace_folder(root, request.name, new)
                except BaseException:
                    shutil.rmtree(new, ignore_errors=True)
                    raise


def import_dataset(request: ImportRequest) -> tuple[Path, ImportedFacts, list[str]]:
    """Read SRC whole, split it, write the prepared set; its folder, facts and the summary's lines."""
    check_name(request.name)
    workers = request.workers or available_cores()
    start = time.perf_counter()
    try:
        source = read_source(Path(request.src), request.image_size, request.skip_bad, workers)
        seconds = time.perf_counter() - start
        count = len(source.labels) + (len(source.test_labels) if source.test_labels is not None else 0)
        for note in source.notes:
            log(printable(note))  # (a note names folders of SRC)
        splits = split_source(source, request)
        found = facts_of(splits, source, request)
        folder = write_imported(request, splits, found)
    except MemoryError:  # SRC's arrays, their resized copies and the splits are held in memory at once
        raise DataError(f"not enough memory to import {request.src}: its images, resized, are held in memory "
                        "whole; free memory, or import fewer images") from None
    return folder, found, summary_lines(request, source, found, folder, (count, seconds, workers))


# ---------------------------------------------------------------- what it says

def summary_lines(request: ImportRequest, source: Source, found: ImportedFacts, folder: Path,
                  speed: tuple[int, float, int]) -> list[str]:
    """What the import did, in a few lines: counts and speed, conversions, splits, what was left out, where."""
    count, seconds, workers = speed
    workers = decoding_processes(workers, count) if source.kind == "imagefolder" else 1
    processes = f"{workers} processes" if workers > 1 else "1 process"
    size = f"{found.image_size}x{found.image_size}"
    kind = "an ImageFolder tree" if source.kind == "imagefolder" else "an .npz"
    lines = [(f"{request.name}: {count:,} images in {len(found.classes)} classes from {printable(request.src)} "
              f"({kind}), read in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} images/s, {processes})"),
             f"  images: {size} RGB; {found.resized:,} resized to {size} with {RESIZE_NAME}" +
             ("; made RGB: " + ", ".join(f"{n:,} {mode}" for mode, n in sorted(source.converted.items()))
              if source.converted else "")]
    test = (f"{found.num_test:,} test (SRC has no test split: carved out of train, {percent(found.carved['test'])}, "
            "stratified)" if "test" in found.carved else f"{found.num_test:,} test (SRC's)")
    lines.append(f"  splits: {found.num_train:,} train / {found.num_val:,} validation "
                 f"({percent(found.carved['val'])} of train, stratified, --split_seed {found.split_seed}) / {test}")
    if absent := absent_classes(found):
        lines.append(f"  {absent}")
    lines.append(f"  skipped: {found.skipped_bad:,} unreadable images" +
                 (f" (--skip_bad; e.g. {printable(source.skipped_bad[0])})" if source.skipped_bad else "") +
                 f", {found.skipped_links:,} symbolic links (not followed: out of SRC, to a folder or broken), "
                 f"{found.ignored_files:,} files that are no images")
    lines.append(f"ready in {printable(folder)} (facts in {FACTS_FILE}: mean {fmt(found.mean)}, std {fmt(found.std)} "
                 "of the training split; training normalises with the recipe's fixed mean/std, as for every set)")
    if warning := facts.coarse_splits_warning({"val": found.num_val, "test": found.num_test}):
        lines.append(warning)
    return lines + next_command(request.name, request.data_root, found.num_train)


# The recipe's length in epochs (48,000 iterations of 256 images on CIFAR's 40,960: 300) and evaluations (48).
RECIPE_EPOCHS = TrainConfig.optim_ni * TrainConfig.batch_size // facts.DATASETS["CIFAR10_x32"].num_train
RECIPE_EVALUATIONS = TrainConfig.optim_ni // TrainConfig.eval_every


def fitted_settings(num_train: int) -> dict[str, int]:
    """Batch size, iterations and evaluation interval of the recipe fitted to a training split: the recipe's
    batch where an epoch still has 4 batches (else the largest power of two that gives it 4), its 300 epochs
    up to its 48,000 iterations, and its 48 evaluations."""
    batch = min(TrainConfig.batch_size, 2 ** max(0, (num_train // 4).bit_length() - 1))
    iterations = min(TrainConfig.optim_ni, -(-RECIPE_EPOCHS * num_train // batch))
    return {"batch_size": batch, "optim_ni": iterations, "eval_every": max(1, iterations // RECIPE_EVALUATIONS)}


def next_command(name: str, data_root: str, num_train: int) -> list[str]:
    """The train command to run next, fitted to the set (the recipe's defaults failed at once on a small
    one: batch 256 of 73 images), and what was fitted."""
    fitted = {key: value for key, value in fitted_settings(num_train).items() if value != getattr(TrainConfig, key)}
    flags = "".join(f" --{key} {value}" for key, value in fitted.items())
    lines = [f"  train on it: resbench train --data_name {name} --data_root {printable(data_root)}{flags}"]
    if fitted:
        lines.append(f"  (fitted to {num_train:,} training images: the recipe's {RECIPE_EPOCHS} epochs, at most "
                     f"{TrainConfig.optim_ni:,} iterations, {RECIPE_EVALUATIONS} evaluations)")
    return lines


def percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def absent_classes(found: ImportedFacts) -> str | None:
    """One line naming the classes too small to appear in the held-out splits (they stay in training)."""
    parts = []
    for split, what in (("val", "validation"), ("test", "test")):
        if split not in found.carved:
            continue
        missing = [found.classes[c] for c, n in enumerate(found.class_counts[split]) if n == 0]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            shown = ", ".join(map(printable, missing[:3])) + more
            parts.append(f"{len(missing)} class{'es' * (len(missing) > 1)} in no {what} image ({shown})")
    return "note: " + "; ".join(parts) + " (too few images to hold one out)" if parts else None


# ---------------------------------------------------------------- `resbench data list`

def imported_status(data_root: str | os.PathLike) -> list[dict]:
    """One `data list` row per imported set in the data root (a folder with a dataset.json), its facts
    and arrays checked as `resbench train` checks them."""
    from resbench.data.prepared import read_prepared, same_folder  # torch: `data list` checks the arrays as train does
    from resbench.errors import ResbenchError

    root, rows, reserved = Path(data_root), [], reserved_names()
    names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir()) if root.is_dir() else []
    for name in (n for n in names if n not in reserved and facts.is_imported(n, root)):
        counts, problem, note = {}, None, None
        try:
            found, (train_x, _, test_x, _) = same_folder(root / name, lambda: (
                (read := facts.read_facts(name, root)), read_prepared(read.spec(name), root, mmap_mode="r")))
            counts = facts.split_sizes(found.spec(name), len(train_x), len(test_x))
            note = facts_note(found)
        except ResbenchError as err:
            problem = str(err)
        rows.append({"name": name, "path": str(root / name), "present": True, "complete": problem is None,
                     "problem": problem, **counts,
                     "bytes": prepare.disk_size(root / name), "note": note})
    return rows


def facts_note(found: ImportedFacts) -> str:
    size = f"{found.image_size}x{found.image_size}"
    test = " (carved out of train)" if "test" in found.carved else ""
    return (f"imported from {printable(found.source)} ({found.source_kind}): {len(found.classes)} classes, {size}, "
            f"{found.num_train:,} train / {found.num_val:,} val / {found.num_test:,} test{test}, {found.resized:,} "
            f"resized with {found.resize}; mean {fmt(found.mean)}, std {fmt(found.std)} (training normalises with "
            "the recipe's fixed mean/std)")
