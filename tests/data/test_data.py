from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import LIMIT, cli_env
from reference_runs import write_reference_run
from resbench.data import digits
from resbench.data.batches import PAD, TrainBatches, crop_flip
from resbench.data.facts import DATASETS
from resbench.data.prepared import load_splits, read_prepared
from resbench.errors import DataFileError
from resbench.results.reference import reference_runs


def test_crop_flip_matches_pad_then_slice():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (6, 5, 7, 3), dtype=torch.uint8)
    dy = torch.tensor([0, 8, 4, 3, 0, 8])
    dx = torch.tensor([0, 8, 4, 1, 8, 0])
    flip = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(images, dy, dx, flip)
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (PAD,) * 4).permute(0, 2, 3, 1)
    for i in range(6):
        expected = padded[i, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7]
        if flip[i]:
            expected = expected.flip(1)
        assert torch.equal(out[i], expected)
    assert torch.equal(out[2], images[2])  # offset 4 and no flip is the identity
    assert (out[0, :PAD, :] == 0).all() and (out[0, :, :PAD] == 0).all()  # zero fill


def test_train_batches_offsets_within_4_and_flip_half_the_time():
    # Every pixel is non-zero and encodes its column, so the crop offset and the flip can be read back.
    n, size = 512, 32
    cols = torch.arange(1, size + 1, dtype=torch.uint8)
    images = cols.view(1, 1, size, 1).expand(n, size, size, 3).contiguous()
    batches = TrainBatches(images, torch.zeros(n, dtype=torch.long), batch_size=256, seed=0)
    shifts, flips = [], []
    for step in range(4):
        x, _ = batches.batch(step)
        assert x.shape == (256, 3, size, size) and x.dtype == torch.float32
        row = (x[:, 0, size // 2] * 255).round().long()  # B×W, zero where padding shows
        for r in row:
            nz = r[r > 0]
            increasing = bool((nz[1:] > nz[:-1]).all())
            flips.append(not increasing)
            first = nz.min().item() if increasing else nz.max().item()
            start = (r > 0).nonzero()[0].item()
            shift = start - (first - 1) if increasing else start - (size - first)
            shifts.append(shift)
    shifts = torch.tensor(shifts)
    assert shifts.abs().max() <= PAD
    assert set(shifts.tolist()) == set(range(-PAD, PAD + 1))
    assert 0.4 < sum(flips) / len(flips) < 0.6


def test_batches_are_a_pure_function_of_seed_and_step():
    images = torch.randint(0, 256, (1024, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(1024)
    a = TrainBatches(images, labels, 256, seed=1)
    b = TrainBatches(images, labels, 256, seed=1)
    xa, ya = a.batch(9)
    for step in (0, 5, 9):
        xb, yb = b.batch(step)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0)[1], a.batch(4)[1])  # a new permutation each epoch


def test_each_epoch_is_a_permutation():
    labels = torch.arange(1024)
    batches = TrainBatches(torch.zeros(1024, 4, 4, 3, dtype=torch.uint8), labels, 256, seed=3)
    seen = torch.cat([batches.batch(s)[1] for s in range(4)])
    assert torch.equal(seen.sort().values, labels)


def test_ranks_share_the_global_batch():
    images = torch.randint(0, 256, (512, 8, 8, 3), dtype=torch.uint8)
    labels = torch.arange(512)
    whole = TrainBatches(images, labels, 256, seed=5).batch(3)
    parts = [TrainBatches(images, labels, 256, seed=5, rank=r, world_size=2).batch(3) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_batches_of_a_split_the_batch_divides_are_as_before_bit_for_bit():
    """The epoch's padded last batch changes nothing where there is none (every built-in set's recipe):
    the digest of these batches was taken before the padding existed (a ragged batch was dropped)."""
    images = torch.randint(0, 256, (1024, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    digest = hashlib.sha256()
    for world_size in (1, 2):
        for rank in range(world_size):
            batches = TrainBatches(images, torch.arange(1024), 256, seed=11, rank=rank, world_size=world_size)
            for step in range(9):
                for tensor in batches.batch(step):
                    digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == "b18c93c088477431d90e9438d19aa5b87c4e55b7874140721d36bbbf696e5064"


def test_the_epochs_last_batch_is_padded_with_zero_images_labelled_0():
    n, b = 200, 48  # 4 full batches and one of 8 images padded with 40 zero images, every epoch
    images = torch.randint(1, 256, (n, 8, 8, 3), dtype=torch.uint8)
    labels = torch.arange(1, n + 1)
    batches = TrainBatches(images, labels, b, seed=3)
    assert batches.steps_per_epoch == 5
    x, y = batches.batch(4)
    assert x.shape[0] == b and (y[8:] == 0).all() and (y[:8] > 0).all() and (x[8:] == 0).all()
    seen = torch.cat([batches.batch(step)[1] for step in range(5)])
    assert torch.equal(seen[seen > 0].sort().values, labels)  # every image once per epoch
    ranks = [TrainBatches(images, labels, b, seed=3, rank=rank, world_size=2).batch(9) for rank in range(2)]
    assert torch.equal(ranks[1][1], torch.zeros(24, dtype=torch.long))  # the padding falls to the last places
    assert torch.equal(torch.cat([ranks[0][0], ranks[1][0]]), batches.batch(9)[0])


def write_prepared(root, name, train_n, test_n, size=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    for split, n in (("train", train_n), ("test", test_n)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, classes, n).astype(np.int64))
    return folder


def test_prepared_layout_splits_in_file_order(tmp_path):
    folder = write_prepared(tmp_path, "CIFAR10_x32", 50_000, 10_000)
    splits = load_splits("CIFAR10_x32", tmp_path)
    train_images = np.load(folder / "train_images.npy")
    assert splits.train_images.shape == (40_960, 32, 32, 3) and splits.val_images.shape == (9_040, 32, 32, 3)
    assert np.array_equal(splits.val_images[:3].numpy(), train_images[40_960:40_963])
    assert splits.test_labels.dtype == torch.int64 and len(splits.test_labels) == 10_000


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataFileError, match=r"CIFAR100_x32.*train_images\.npy.*resbench data download"):
        load_splits("CIFAR100_x32", tmp_path)


@pytest.mark.parametrize("fault, message", [
    ("truncated", "truncated or not a valid .npy"),
    ("dtype", "expected uint8"),
    ("short", "needs more than 40960"),
    ("labels", r"labels in \[10, 10\], expected \[0, 9\]"),
    ("count", "expected 10000 integer labels"),
    ("npz", r"not a valid \.npy file \(it is a \.npz archive"),
])
def test_bad_files_are_named(tmp_path, fault, message):
    folder = write_prepared(tmp_path, "CIFAR10_x32", 50_000, 10_000)
    if fault == "truncated":
        data = (folder / "test_images.npy").read_bytes()
        (folder / "test_images.npy").write_bytes(data[: len(data) // 2])
    elif fault == "dtype":
        np.save(folder / "test_images.npy", np.zeros((10_000, 32, 32, 3), np.float32))
    elif fault == "short":
        np.save(folder / "train_images.npy", np.zeros((40_960, 32, 32, 3), np.uint8))
        np.save(folder / "train_labels.npy", np.zeros(40_960, np.int64))
    elif fault == "labels":
        np.save(folder / "test_labels.npy", np.full(10_000, 10, np.int64))
    elif fault == "npz":  # np.load opens a renamed .npz as an archive of arrays
        np.savez(folder / "test.npz", images=np.zeros((10_000, 32, 32, 3), np.uint8))
        (folder / "test.npz").replace(folder / "test_images.npy")
    else:
        np.save(folder / "test_labels.npy", np.zeros(9_999, np.int64))
    with pytest.raises(DataFileError, match=message):
        load_splits("CIFAR10_x32", tmp_path)
    with pytest.raises(DataFileError, match=message):  # the check of `resbench data list` and `data download`
        read_prepared(DATASETS["CIFAR10_x32"], tmp_path, mmap_mode="r")


def test_big_endian_labels_load_in_native_order(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "CIFAR10_x32", dataclasses.replace(DATASETS["CIFAR10_x32"], num_train=60))
    folder = write_prepared(tmp_path, "CIFAR10_x32", 100, 20)
    train_labels, test_labels = (np.load(folder / f"{split}_labels.npy") for split in ("train", "test"))
    np.save(folder / "train_labels.npy", train_labels.astype(">i8"))  # written on a big-endian machine
    np.save(folder / "test_labels.npy", test_labels.astype(">u2"))

    splits = load_splits("CIFAR10_x32", tmp_path)

    assert torch.equal(torch.cat([splits.train_labels, splits.val_labels]), torch.from_numpy(train_labels))
    assert torch.equal(splits.test_labels, torch.from_numpy(test_labels))


def test_digits_demo_splits():
    splits = load_splits("Digits_x32", "unused")
    spec = DATASETS["Digits_x32"]
    assert len(splits.train_images) == spec.num_train == 1280
    assert len(splits.val_images) + len(splits.train_images) + len(splits.test_images) == 1797
    assert splits.train_images.dtype == torch.uint8 and splits.train_images.shape[1:] == (32, 32, 3)
    assert set(splits.test_labels.tolist()) == set(range(10))


def test_the_demo_reads_scikit_learns_digits_as_load_digits_does_without_importing_it(monkeypatch):
    """Read from the bundled file in a process that never imports sklearn (1.7 s of every demo run),
    and through load_digits where the file is not where it was: the same arrays both ways."""
    from sklearn.datasets import load_digits

    check = "import sys; from resbench.data.digits import digits_arrays; digits_arrays(); print('sklearn' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", check], env=cli_env(), capture_output=True, text=True, timeout=LIMIT)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
    reference = load_digits()
    read = digits.digits_8x8()
    monkeypatch.setattr(digits, "bundled_digits_file", lambda: None)
    for images, labels in (read, digits.digits_8x8()):
        assert np.array_equal(images, reference.images) and images.dtype == reference.images.dtype
        assert np.array_equal(labels, reference.target) and labels.dtype == np.int64


def test_a_npy_header_declaring_more_than_the_file_holds_is_refused(tmp_path):
    """A 1 KB file declaring 10^12 images: refused from its header, before numpy allocates 3 PB."""
    folder = write_prepared(tmp_path, "CIFAR10_x32", 50_000, 10_000)
    with open(folder / "test_images.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                 "shape": (10**12, 32, 32, 3)})
        f.write(bytes(1000))
    message = r"test_images.npy is truncated or not a valid .npy file \(its header declares a uint8 array of shape " \
              r"\(1000000000000, 32, 32, 3\), 3,072,000,000,000,000 bytes, but it holds 1,000\)"
    with pytest.raises(DataFileError, match=message):
        load_splits("CIFAR10_x32", tmp_path)
    with pytest.raises(DataFileError, match=message):
        read_prepared(DATASETS["CIFAR10_x32"], tmp_path, mmap_mode="r")


def test_a_npy_header_with_a_negative_size_or_numpys_multiline_refusal_is_one_line(tmp_path):
    import struct

    from resbench.data.prepared import load_npy

    path = tmp_path / "images.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (-1, 32, 32, 3)})
        f.write(bytes(100))
    with pytest.raises(DataFileError, match=r"declares the shape \(-1, 32, 32, 3\), with a negative size"):
        load_npy(path, "r")
    header = ("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }" + " " * 20_000 + "\n").encode()
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header + bytes(4))
    with pytest.raises(DataFileError, match="is large and may not be safe to load securely") as refused:
        load_npy(path, "r")
    assert "\n" not in str(refused.value)


def test_a_built_in_set_of_other_sizes_is_flagged_refused_and_never_set_beside_the_published_figures(tmp_path, cli):
    """A hand-made CIFAR10_x32 of 41,000 / 200 images was `complete`, trained, and stood beside the published
    figures in `table --compare reference` (issue 39). The trainer records the sizes (test_train.py's seed
    command checks them); a run that recorded these has no published figures beside it."""
    folder = tmp_path / "data" / "CIFAR10_x32"
    folder.mkdir(parents=True)
    for split, n in (("train", 41_000), ("test", 200)):
        np.save(folder / f"{split}_images.npy", np.zeros((n, 32, 32, 3), np.uint8))
        np.save(folder / f"{split}_labels.npy", np.arange(n) % 10)
    listed = cli("data", "list", "--data_root", tmp_path / "data", check=True).stdout
    row = next(line for line in listed.splitlines() if line.startswith("CIFAR10_x32"))
    assert row.split()[1:5] == ["nonstandard", "40960", "40", "200"]
    sizes = "40,960 / 40 / 200 train / validation / test images where the official CIFAR10_x32 has 40,960 / 9,040 / 10,000"
    assert f"not the official set: {sizes}; `resbench train` refuses it without --allow_nonstandard" in row
    flags = ("train", "--data_name", "CIFAR10_x32", "--data_root", tmp_path / "data", "--save", tmp_path / "run")
    refused = cli(*flags)
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {folder} is not the official CIFAR10_x32: "
                                                                 f"{sizes}, so its figures would not be")
    assert "--allow_nonstandard to train on it anyway" in refused.stderr and not (tmp_path / "run").exists()
    run = write_reference_run(tmp_path / "runs" / "run", reference_runs()[("CIFAR10_x32", 20, 1, 0.001, "fp32")])
    recorded = {"train": 40_960, "val": 40, "test": 200}
    for name in ("summary.json", "config.json"):
        saved = json.loads((run / name).read_text())
        saved.update(splits=recorded) if name == "summary.json" else saved["resolved"].update(splits=recorded)
        (run / name).write_text(json.dumps(saved))
    table = cli("table", tmp_path / "runs", "--compare", "reference", check=True).stdout
    assert "(ref " not in table and table.rstrip().endswith("| not the official data, no published figures")
    compared = cli("compare", tmp_path / "runs", "--brief", check=True).stdout
    assert f"{run}: no reference run: not the official CIFAR10_x32: {sizes}" in compared


def test_data_list_names_the_demo_and_the_fix(tmp_path, cli):
    out = cli("data", "list", "--data_root", tmp_path, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    # train counts the training split, not the validation split the training file also holds (issue 39)
    assert lines["Digits_x32"].split()[1:5] == ["complete", "1280", "217", "300"] and "built in" in lines["Digits_x32"]
    assert f"`resbench data download CIFAR100_x32 --data_root {tmp_path}`" in lines["CIFAR100_x32"]
