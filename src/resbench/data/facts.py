"""Every training dataset's facts in one table: classes, image size, split sizes, and the
evaluation sets that go with it (its corrupted test split, its usual OOD sets).

Light (no torch): the command line, tables and checks read it without loading torch. The
evaluation-only sets (corrupted copies, SVHN, Noise) are described in `evalsets.EVAL_SETS`, and
where each downloadable set comes from (archive, checksum, reader) in `recipes.RECIPES`.
"""

from __future__ import annotations

from dataclasses import dataclass

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


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("CIFAR10_x32", 10, 32, 40_960, 9_040, 10_000, "CIFAR10_C", ("CIFAR100_x32", "SVHN")),
        DatasetSpec("CIFAR100_x32", 100, 32, 40_960, 9_040, 10_000, "CIFAR100_C", ("CIFAR10_x32", "SVHN")),
        DatasetSpec("TinyImageNet200_x32", 200, 32, 81_920, 18_080, 10_000, "TinyImageNet200_C",
                    ("SVHN", "TinyImageNet200_C")),
        DatasetSpec("TinyImageNet200_x64", 200, 64, 81_920, 18_080, 10_000, "TinyImageNet200_C",
                    ("TinyImageNet200_C",)),
        # Offline demo: scikit-learn's 1,797 bundled 8×8 digits, upsampled to 32×32 RGB.
        DatasetSpec("Digits_x32", 10, 32, 1_280, 217, 300, "Digits_C", ("Noise",)),
    )
}
DEMO_DATASET = "Digits_x32"
DEMO_TEST_SIZE = 300


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown data_name {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
