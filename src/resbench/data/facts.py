"""Every training dataset's facts in one table: classes, image size, split sizes, and the
evaluation sets that go with it (its corrupted test split, its usual OOD sets); and the facts
file of a dataset imported from a researcher's own images (`resbench data import`), which holds
the same facts for it: `<data_root>/<NAME>/dataset.json`, written and read here only.

Light (no torch): the command line, tables and checks read it without loading torch. The
evaluation-only sets (corrupted copies, SVHN, Noise) are described in `evalsets.EVAL_SETS`, and
where each downloadable set comes from (archive, checksum, reader) in `recipes.RECIPES`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from resbench.errors import DataError
from resbench.files import read_bounded

SEVERITIES = 5  # of every corrupted test set (CIFAR-10-C's and TinyImageNet-C's five levels)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_size: int
    num_train: int  # the first `num_train` images of the training file; the rest is validation
    # Images one evaluation scores in the official files (validation split + test file); what
    # `resbench bench --grid` counts to time a row's evaluations.
    num_val: int = 0
    num_test: int = 0
    corrupted: str | None = None  # its corrupted test split (`resbench eval --corruptions`)
    # The OOD sets `resbench eval --ood` uses when none are named: the usual pairs of the literature.
    natural_ood: tuple[str, ...] = ()
    imported: bool = False  # made by `resbench data import` (facts in dataset.json), not downloaded
    # The reference's ImageNet rows (docs/reference/imagenet-x.md): the whole training file trains and the
    # official validation set is both validation and test, since the reference selects its best checkpoint on it.
    val_is_test: bool = False

    @property
    def images_per_evaluation(self) -> int:
        """Images one evaluation scores: validation and test, or the test set once where it is both."""
        return self.num_test if self.val_is_test else self.num_val + self.num_test


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("CIFAR10_x32", 10, 32, 40_960, 9_040, 10_000, "CIFAR10_C", ("CIFAR100_x32", "SVHN")),
        DatasetSpec("CIFAR100_x32", 100, 32, 40_960, 9_040, 10_000, "CIFAR100_C", ("CIFAR10_x32", "SVHN")),
        DatasetSpec("TinyImageNet200_x32", 200, 32, 81_920, 18_080, 10_000, "TinyImageNet200_C",
                    ("SVHN", "TinyImageNet200_C")),
        DatasetSpec("TinyImageNet200_x64", 200, 64, 81_920, 18_080, 10_000, "TinyImageNet200_C",
                    ("TinyImageNet200_C",)),
        DatasetSpec("ImageNet1k_x32", 1000, 32, 1_281_167, 50_000, 50_000, val_is_test=True),
        DatasetSpec("ImageNet1k_x64", 1000, 64, 1_281_167, 50_000, 50_000, val_is_test=True),
        # Offline demo: scikit-learn's 1,797 bundled 8×8 digits, upsampled to 32×32 RGB.
        DatasetSpec("Digits_x32", 10, 32, 1_280, 217, 300, "Digits_C", ("Noise",)),
    )
}
DEMO_DATASET = "Digits_x32"
# A prepared training set's files under <data_root>/<NAME>/ (uint8 NHWC images, integer labels; the
# training file holds the training split first and the validation split after it).
PREPARED_FILES = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")
DEMO_TEST_SIZE = 300


def split_sizes(spec: DatasetSpec, train_file: int, test_file: int) -> dict[str, int]:
    """The sizes of a prepared set's splits from its files': the training file holds the training split
    (its first `num_train` images), then the validation split; where validation is the test set
    (`val_is_test`), the whole training file trains."""
    if spec.val_is_test:
        return {"train": train_file, "val": test_file, "test": test_file}
    return {"train": min(train_file, spec.num_train), "val": max(train_file - spec.num_train, 0), "test": test_file}


def size_problem(spec: DatasetSpec, sizes: dict[str, int]) -> str | None:
    """How a built-in set's split sizes differ from the official ones, which its published figures are of,
    or None; an imported set's sizes are its own."""
    official = {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test}
    if spec.imported or sizes == official:
        return None
    return (f"{' / '.join(f'{sizes[s]:,}' for s in official)} train / validation / test images where the official "
            f"{spec.name} has {' / '.join(f'{n:,}' for n in official.values())}")


# Images a held-out split needs before its figures mean something: below 100, one image moves an accuracy
# by more than a point, and best-validation selection picks noise (3 x 30 images leave 8 and 9).
MIN_SPLIT_FOR_FIGURES = 100


def resolution(images: int) -> str:
    """`one image = 12.5 points`: how much one image moves an accuracy on a split of `images`."""
    return f"one image = {100 / images:.3g} points"


def coarse_splits_warning(sizes: dict[str, int]) -> str | None:
    """One line where the validation or test split is too small for its figures to mean anything, or None."""
    small = [f"{what} {sizes[split]:,} image{'s' * (sizes[split] != 1)} ({resolution(sizes[split])})"
             for split, what in (("val", "validation"), ("test", "test")) if sizes[split] < MIN_SPLIT_FOR_FIGURES]
    if not small:
        return None
    return (f"warning: {' and '.join(small)}: below {MIN_SPLIT_FOR_FIGURES} images a split's figures are mostly "
            "noise (best-validation selection and test figures alike); import more images, or hold out more "
            "(--val_fraction, --test_fraction)")


def dataset_spec(name: str, data_root: str | os.PathLike | None = None) -> DatasetSpec:
    """The facts of a built-in dataset, or of one imported into `data_root` (its dataset.json, checked).

    ValueError for a name that is neither; FactsError (one line naming the file) for a damaged facts file.
    """
    if name in DATASETS:
        return DATASETS[name]
    if data_root is not None and is_imported(name, data_root):
        return read_facts(name, data_root).spec(name)
    own = (f", or import your own images: `resbench data import {name} SRC --data_root {data_root}` "
           f"(there is no {Path(data_root) / name / FACTS_FILE})"
           if data_root is not None and is_valid_name(name) else "")
    raise ValueError(f"unknown data_name {name!r}: choose one of {', '.join(DATASETS)}{own}")


def validates_on_test(name: str) -> bool:
    """Whether `name` validates on its test set (`DatasetSpec.val_is_test`): its val/acc is a test accuracy."""
    return name in DATASETS and DATASETS[name].val_is_test


def val_is_test_note(name: str) -> str:
    """What `table` and `compare` say under a set that validates on its test set."""
    return (f"val = test: {name} validates on its test set (the official validation set), as the reference does; "
            "its val/acc is a test accuracy and its best checkpoint is chosen on the test set (test-set selection, "
            "as `resbench table --selection test` names it)")


# ---------------------------------------------------------------- imported datasets: dataset.json

FACTS_FILE = "dataset.json"
FACTS_FORMAT = 1
IMPORT_SIZES = (32, 64)  # the image sizes the networks are built for
MAX_IMAGES = 2_000_000  # 2M x 64x64x3 is 24.6 GB of uint8: held in memory to train, so about the most that fits
MAX_CLASSES = 10_000
MAX_CLASS_NAME = 255  # characters: a folder name's limit on common file systems
MAX_FACTS_BYTES = 4 * 2**20  # 10,000 class names of 255 characters, and the rest
# A dataset's name is a folder under the data root and a run folder's name: data, never a path.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
SOURCE_KINDS = ("imagefolder", "npz")
RESIZE_METHODS = ("PIL BICUBIC",)  # why this one: `data.decode.RESIZE`'s note
SPLITS = ("train", "val", "test")


class FactsError(DataError):
    """An imported dataset's dataset.json is missing a fact or holds a wrong one; the message names the file."""


@dataclass(frozen=True)
class ImportedFacts:
    """What `resbench data import` recorded about a dataset it prepared (the fields of dataset.json)."""

    classes: tuple[str, ...]  # class names; label i is classes[i]
    image_size: int
    num_train: int  # the first num_train images of train_images.npy; the num_val after them validate
    num_val: int
    num_test: int
    class_counts: dict[str, tuple[int, ...]]  # images per class in each of SPLITS
    mean: tuple[float, float, float]  # per channel, of the training split, in [0, 1] (facts only: the
    std: tuple[float, float, float]   # recipe normalises with its own fixed mean/std, models/resnet.py)
    source: str  # SRC as given on the command line
    source_kind: str  # one of SOURCE_KINDS
    resize: str  # the method images not at image_size were resized with (RESIZE_METHODS)
    resized: int  # how many were
    split_seed: int
    carved: dict[str, float]  # split -> the fraction of the training images held out for it (val; test too
    #                           when SRC had none)
    skipped_bad: int  # unreadable images left out (--skip_bad)
    skipped_links: int  # symbolic links not followed (leading out of SRC, or to a folder)
    ignored_files: int  # files that are no images by their name (notes, hidden files)
    resbench: str  # the version that wrote it

    def spec(self, name: str) -> DatasetSpec:
        return DatasetSpec(name, len(self.classes), self.image_size, self.num_train, self.num_val, self.num_test,
                           None, ("Noise",), imported=True)


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def facts_path(name: str, data_root: str | os.PathLike) -> Path:
    return Path(data_root) / name / FACTS_FILE


def is_imported(name: object, data_root: str | os.PathLike) -> bool:
    """Whether `<data_root>/<name>/dataset.json` exists (checked or not): only for a valid name, so
    a name read from a file (`../x`) never reaches outside the data root."""
    return is_valid_name(name) and os.path.lexists(facts_path(name, data_root))


def facts_json(facts: ImportedFacts) -> bytes:
    """dataset.json's text: one line per field, so that a person can read it."""
    record = {"format": FACTS_FORMAT, **asdict(facts)}
    return ("{\n" + ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items())
            + "\n}\n").encode()


def read_facts(name: str, data_root: str | os.PathLike) -> ImportedFacts:
    """dataset.json of an imported dataset, bounded in size and every field checked."""
    path = facts_path(name, data_root)
    fix = f"import the set again (`resbench data import {name} SRC --data_root {data_root}`)"
    try:
        text = read_bounded(path, MAX_FACTS_BYTES)  # (a FIFO planted there would block a plain read forever)
    except OSError as exc:
        raise FactsError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FactsError(f"{path} is not JSON ({exc}); {fix}") from None
    problem = facts_problem(record)
    if problem:
        raise FactsError(f"{path}: {problem}; {fix}")
    record.pop("format")
    return ImportedFacts(**{key: as_tuples(value) for key, value in record.items()})


def as_tuples(value: Any) -> Any:
    """JSON lists as the tuples of the dataclass (a frozen one: its facts cannot change under a caller)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {key: as_tuples(v) for key, v in value.items()}
    return value


def is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_fraction(value: Any, low: float = 0.0, high: float = 1.0, open_low: bool = False) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (low < value if open_low else low <= value) and value <= high)


def is_class_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLASS_NAME


def is_channel_figures(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(is_fraction(v) for v in value)


def is_carved(value: Any) -> bool:
    return (isinstance(value, dict) and "val" in value and set(value) <= {"val", "test"}
            and all(is_fraction(v, 0.0, 1.0, open_low=True) and v < 1 for v in value.values()))


FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "classes": (lambda v: isinstance(v, list) and 2 <= len(v) <= MAX_CLASSES and all(map(is_class_name, v))
                and len(set(v)) == len(v), f"a list of 2 to {MAX_CLASSES:,} distinct names"),
    "image_size": (lambda v: v in IMPORT_SIZES and not isinstance(v, bool), f"one of {IMPORT_SIZES}"),
    **{f"num_{split}": ((lambda v: is_int(v, 1, MAX_IMAGES)), f"an integer from 1 to {MAX_IMAGES:,}")
       for split in SPLITS},
    "class_counts": (lambda v: isinstance(v, dict) and set(v) == set(SPLITS) and all(
        isinstance(c, list) and all(is_int(n, 0, MAX_IMAGES) for n in c) for c in v.values()),
        "the images per class of train, val and test"),
    "mean": (is_channel_figures, "3 numbers in [0, 1]"),
    "std": (is_channel_figures, "3 numbers in [0, 1]"),
    "source": (lambda v: isinstance(v, str) and 0 < len(v) <= 4096, "the path imported from"),
    "source_kind": (lambda v: v in SOURCE_KINDS, f"one of {', '.join(SOURCE_KINDS)}"),
    "resize": (lambda v: v in RESIZE_METHODS, f"one of {', '.join(RESIZE_METHODS)}"),
    "split_seed": (lambda v: is_int(v, 0, 2**63 - 1), "an integer from 0 to 2**63 - 1"),
    "carved": (is_carved, "the fraction held out for val (and test), each in (0, 1)"),
    **{key: ((lambda v: is_int(v, 0, 10 * MAX_IMAGES)), "a count") for key in
       ("resized", "skipped_bad", "skipped_links", "ignored_files")},
    "resbench": (lambda v: isinstance(v, str) and len(v) <= 64, "a version"),
}


def facts_problem(record: Any) -> str | None:
    """What is wrong with a dataset.json record, or None: every field present and of its type, the
    counts consistent with each other."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object of facts"
    if record.get("format") != FACTS_FORMAT:
        return f"format {json.dumps(record.get('format'))[:20]} is not {FACTS_FORMAT} (written by another resbench?)"
    wanted = {f.name for f in fields(ImportedFacts)}
    if unknown := sorted(set(record) - wanted - {"format"}):
        return f"unknown fields {', '.join(map(str, unknown[:5]))} (written by another resbench?)"
    if missing := [key for key in FIELD_CHECKS if key not in record]:
        return f"it lacks {', '.join(missing)}"
    for key, (check, what) in FIELD_CHECKS.items():
        if not check(record[key]):
            return f"{key} is not {what}"
    counts = record["class_counts"]
    for split in SPLITS:
        if len(counts[split]) != len(record["classes"]) or sum(counts[split]) != record[f"num_{split}"]:
            return f"class_counts.{split} does not add up to num_{split} over the {len(record['classes'])} classes"
    return None
