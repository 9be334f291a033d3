"""Preparing a dataset (data/fetch/prepare.py, store.py): the mini archives prepared pixel for pixel, verified,
written whole or not at all, in turns when several processes prepare at once, never through a planted link; what
`data download`, `data list` and `train` say of it."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from archives import (
    PER_BATCH,
    REAL_SPECS,
    TINY_TRAIN_COUNTS,
    TINY_VAL,
    TINY_WNIDS,
    _all_files,
    _load,
    _place,
    _planar_rows,
    _use_archive,
    cifar10,  # noqa: F401 (fixture)
    cifar100,  # noqa: F401 (fixture)
    closed_url,  # noqa: F401 (fixture)
    mini_num_train,  # noqa: F401 (autouse fixture)
    server,  # noqa: F401 (fixture)
    tiny,  # noqa: F401 (fixture)
)
from PIL import Image

from conftest import LIMIT, wait_until
from resbench.cli.main import main
from resbench.data.facts import DATASETS, PREPARED_FILES, DatasetSpec
from resbench.data.fetch import prepare, store
from resbench.data.fetch.prepare import (
    dataset_status,
    is_complete,
    prepare_dataset,
    prepare_datasets,
    training_datasets,
)
from resbench.data.fetch.store import write_dataset
from resbench.data.prepared import load_splits
from resbench.errors import DataError, DataFileError
from resbench.files import TEMPORARY_MARK


def test_cifar10_round_trip_is_pixel_exact(tmp_path, monkeypatch, server, cifar10):  # noqa: F811
    archive, train_images, train_labels, test_images, test_labels = cifar10
    server.files["/cifar-10-python.tar.gz"] = archive
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url)

    folder = prepare_dataset("CIFAR10_x32", tmp_path)

    assert folder == tmp_path / "CIFAR10_x32"
    arrays = _load(folder)
    assert arrays["train_images"].dtype == np.uint8 and arrays["train_images"].shape == (5 * PER_BATCH, 32, 32, 3)
    assert arrays["train_labels"].dtype == np.int64
    np.testing.assert_array_equal(arrays["train_images"], train_images)  # batches 1..5 in order
    np.testing.assert_array_equal(arrays["train_labels"], train_labels)
    np.testing.assert_array_equal(arrays["test_images"], test_images)
    np.testing.assert_array_equal(arrays["test_labels"], test_labels)
    # planar layout, spelled out: row[1] is R at (0, 1), row[32] is R at (1, 0), row[1024] is G at (0, 0)
    row = _planar_rows(train_images[:1])[0]
    image = arrays["train_images"][0]
    assert (image[0, 1, 0], image[1, 0, 0], image[0, 0, 1], image[0, 0, 2]) == (row[1], row[32], row[1024], row[2048])
    # a second call is a no-op: no network, nothing rewritten
    mtime = (folder / "train_images.npy").stat().st_mtime_ns
    assert prepare_dataset("CIFAR10_x32", tmp_path) == folder
    assert len(server.log) == 1 and (folder / "train_images.npy").stat().st_mtime_ns == mtime
    assert _all_files(tmp_path) == sorted(["downloads/cifar-10-python.tar.gz"]
                                          + [f"CIFAR10_x32/{f}" for f in PREPARED_FILES])


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch, cifar100, closed_url):  # noqa: F811
    archive, expected = cifar100
    _place(tmp_path, "cifar-100-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-100-python.tar.gz", archive, closed_url)

    arrays = _load(prepare_dataset("CIFAR100_x32", tmp_path))

    for split in ("train", "test"):
        np.testing.assert_array_equal(arrays[f"{split}_images"], expected[split][0])
        np.testing.assert_array_equal(arrays[f"{split}_labels"], expected[split][1])


def test_tinyimagenet_both_variants_from_one_decode(tmp_path, monkeypatch, server, tiny, closed_url):  # noqa: F811
    archive, jpegs = tiny
    server.files["/tiny-imagenet-200.zip"] = archive
    _use_archive(monkeypatch, "tiny-imagenet-200.zip", archive, closed_url)  # only the mirror works
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))

    x32, x64 = prepare_datasets(["TinyImageNet200_x32", "TinyImageNet200_x64"], tmp_path, mirror=server.url)

    assert len(server.log) == 1
    assert len(opened) == sum(TINY_TRAIN_COUNTS.values()) + len(TINY_VAL)  # each JPEG decoded once
    big, small = _load(x64), _load(x32)
    # round robin over classes in wnids order (n03, n01, n02), each class's files sorted;
    # n01 has only two images, so it drops out of the last round
    order = [("n03", 0), ("n01", 0), ("n02", 0), ("n03", 1), ("n01", 1), ("n02", 1), ("n03", 2), ("n02", 2)]
    np.testing.assert_array_equal(big["train_labels"], [TINY_WNIDS.index(w) for w, _ in order])
    expected_train = [f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG" for w, i in order]
    expected_test = [f"tiny-imagenet-200/val/images/{f}" for f in sorted(TINY_VAL)]
    np.testing.assert_array_equal(big["test_labels"], [TINY_WNIDS.index(TINY_VAL[f]) for f in sorted(TINY_VAL)])
    for split, names in (("train", expected_train), ("test", expected_test)):
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(jpegs[n])).convert("RGB")) for n in names])
        np.testing.assert_array_equal(big[f"{split}_images"], decoded)
        assert big[f"{split}_images"].shape[1:] == (64, 64, 3) and small[f"{split}_images"].shape[1:] == (32, 32, 3)
        np.testing.assert_array_equal(small[f"{split}_labels"], big[f"{split}_labels"])
        box_mean = big[f"{split}_images"].reshape(-1, 32, 2, 32, 2, 3).astype(float).mean(axis=(2, 4))
        assert np.abs(small[f"{split}_images"] - box_mean).max() <= 1.0
    gray = big["train_images"][order.index(("n01", 1))]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, monkeypatch, server, cifar10):  # noqa: F811
    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url, md5="0" * 32)

    with pytest.raises(DataError) as excinfo:
        prepare_dataset("CIFAR10_x32", tmp_path)

    message = str(excinfo.value)
    assert "cifar-10-python.tar.gz" in message and "0" * 32 in message
    assert hashlib.md5(archive).hexdigest() in message
    assert _all_files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # nor the downloads folder the failed preparation created


def test_placed_archive_with_wrong_checksum_is_refused_but_kept(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    placed = _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url, md5="f" * 32)

    with pytest.raises(DataError, match="checksum mismatch for cifar-10-python.tar.gz"):
        prepare_dataset("CIFAR10_x32", tmp_path)

    assert placed.exists() and not (tmp_path / "CIFAR10_x32").exists()


def test_a_dataset_the_disk_has_no_room_for_leaves_nothing_half_written(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    real_save, saved = np.save, []

    def save(path, array, **kwargs):
        if saved:  # the second file finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        saved.append(path)
        real_save(path, array, **kwargs)

    monkeypatch.setattr(store.np, "save", save)
    with pytest.raises(DataError) as refused:
        prepare_dataset("CIFAR10_x32", tmp_path)
    assert str(refused.value) == (f"cannot write CIFAR10_x32 in {tmp_path} (No space left on device); free space on "
                                  "that disk or pass another --data_root, then run again (nothing half-written was "
                                  "kept)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"] and saved
    monkeypatch.setattr(store.np, "save", real_save)
    prepare_dataset("CIFAR10_x32", tmp_path)
    assert is_complete(tmp_path, "CIFAR10_x32")


def test_interrupted_preparation_leaves_no_dataset(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    real_save, saved = np.save, []

    def save_then_crash(path, array, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, array, **kwargs)

    monkeypatch.setattr(np, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("CIFAR10_x32", tmp_path)

    assert saved and sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]
    monkeypatch.setattr(np, "save", real_save)
    prepare_dataset("CIFAR10_x32", tmp_path)
    assert is_complete(tmp_path, "CIFAR10_x32")


def test_data_list_reports_complete_missing_and_damaged(tmp_path, monkeypatch, run_cli, cifar10, closed_url):  # noqa: F811
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    prepare_dataset("CIFAR10_x32", tmp_path)
    damaged = tmp_path / "TinyImageNet200_x64"
    damaged.mkdir()
    for split in ("train", "test"):
        np.save(damaged / f"{split}_images.npy", np.zeros((4, 32, 32, 3), np.uint8))  # wrong size for _x64
        np.save(damaged / f"{split}_labels.npy", np.zeros(4, np.int64))

    status = {row["name"]: row for row in dataset_status(tmp_path)}
    proc = run_cli("data", "list", "--data_root", tmp_path)  # in a new process: without this one's patches

    cifar = status["CIFAR10_x32"]  # (read with this process's 4-image training split)
    assert cifar["complete"] and (cifar["train"], cifar["val"], cifar["test"]) == (4, 96, 20)
    assert status["CIFAR10_x32"]["bytes"] > 100 * 3072
    assert not status["CIFAR100_x32"]["present"] and not status["CIFAR100_x32"]["complete"]
    assert status["TinyImageNet200_x64"]["present"] and not status["TinyImageNet200_x64"]["complete"]
    assert "(N, 64, 64, 3)" in status["TinyImageNet200_x64"]["problem"]
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:]}
    # The subprocess checks the real split, which `train` would refuse: 100 images, not more than 40,960.
    assert lines["CIFAR10_x32"][1:4] == ["damaged", "-", "-"]
    assert "holds 100 images; CIFAR10_x32 needs more than 40960" in " ".join(lines["CIFAR10_x32"])
    assert lines["CIFAR100_x32"][1] == "missing" and lines["TinyImageNet200_x32"][1] == "missing"
    assert lines["TinyImageNet200_x64"][1] == "damaged"


def test_cli_download_errors_cleanly_then_no_verify_warns(tmp_path, cli, cifar10):  # noqa: F811
    placed = _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])  # tiny archive: not the official md5

    refused = cli("data", "download", "CIFAR10_x32", "--data_root", tmp_path)
    forced = cli("data", "download", "CIFAR10_x32", "--data_root", tmp_path, "--no_verify")

    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: checksum mismatch for cifar-10-python.tar.gz: expected md5 c58f30108f718f92721af3b95e74349a")
    assert placed.exists()
    assert forced.returncode == 0, forced.stderr
    assert "warning" in forced.stderr and is_complete(tmp_path, "CIFAR10_x32")


def test_cli_download_all_offline(tmp_path, cli, cifar10, cifar100, tiny):  # noqa: F811
    for filename, archive in [("cifar-10-python.tar.gz", cifar10[0]), ("cifar-100-python.tar.gz", cifar100[0]),
                              ("tiny-imagenet-200.zip", tiny[0])]:
        _place(tmp_path, filename, archive)

    proc = cli("data", "download", "all", "--data_root", tmp_path, "--no_verify", "--mirror", "http://127.0.0.1:9/")

    assert proc.returncode == 0, proc.stderr
    assert all(row["complete"] for row in dataset_status(tmp_path) if row["name"] in training_datasets())
    assert proc.stderr.count("preparing") == 3  # one pass per archive: both TinyImageNet sizes together


def test_train_prepares_a_missing_dataset_itself(tmp_path, monkeypatch, server, cifar10, capfd):  # noqa: F811
    from resbench.settings.config import TrainConfig
    from resbench.train.loop import train

    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url)
    # The mini archive has 50 training images: split them 32/18 instead of 40,960/9,040.
    monkeypatch.setitem(DATASETS, "CIFAR10_x32", DatasetSpec("CIFAR10_x32", 10, 32, 32))
    summary = train(TrainConfig(data_name="CIFAR10_x32", resnet_depth=8, batch_size=16, optim_ni=2,
                                data_root=str(tmp_path / "data"), save=str(tmp_path / "run")))
    assert summary["status"] == "finished"
    np.testing.assert_array_equal(np.load(tmp_path / "data" / "CIFAR10_x32" / "test_labels.npy"), cifar10[4])
    assert "fetching and preparing it now" in capfd.readouterr().err


def test_too_few_training_images_is_not_prepared(tmp_path, monkeypatch, cifar10, closed_url, capfd):  # noqa: F811
    """`data list`, `data download` and `train` make the same checks, so none calls usable what another refuses."""
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    prepare_dataset("CIFAR10_x32", tmp_path)  # 100 training images
    monkeypatch.setitem(DATASETS, "CIFAR10_x32", REAL_SPECS["CIFAR10_x32"])  # needs more than 40,960
    capfd.readouterr()

    status = {row["name"]: row for row in dataset_status(tmp_path)}["CIFAR10_x32"]
    prepare_dataset("CIFAR10_x32", tmp_path)

    problem = "train_images.npy holds 100 images; CIFAR10_x32 needs more than 40960"
    assert not status["complete"] and problem in status["problem"]
    assert "already prepared" not in capfd.readouterr().err  # prepared again instead
    with pytest.raises(DataFileError, match=problem):
        load_splits("CIFAR10_x32", tmp_path)


def test_concurrent_preparations_take_turns(tmp_path, monkeypatch, server, cifar10):  # noqa: F811
    """Two runs preparing one dataset at once (`sweep --jobs 2`): one downloads, the other waits, both succeed."""
    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive
    server.gate = threading.Event()  # the first download waits until the second run has started
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url)
    results, messages = {}, []
    # fetch's log lines, collected directly: polling a captured stderr while threads write to it
    # can lose a line between reading and truncating the capture
    monkeypatch.setattr(prepare, "log", messages.append)

    def prepare_in_thread(key: str) -> None:
        try:
            results[key] = prepare_dataset("CIFAR10_x32", tmp_path)
        except BaseException as err:  # reported by the assertion on results below
            results[key] = err

    def second_waits_or_downloads() -> bool:
        return len(server.log) > 1 or any("waiting for another process" in m for m in messages)

    threads = {key: threading.Thread(target=prepare_in_thread, args=(key,), daemon=True) for key in ("first", "second")}
    threads["first"].start()
    wait_until(lambda: bool(server.log))
    threads["second"].start()
    wait_until(second_waits_or_downloads)
    server.gate.set()
    for thread in threads.values():
        thread.join(LIMIT)

    folder = tmp_path / "CIFAR10_x32"
    assert results == {"first": folder, "second": folder}
    assert len(server.log) == 1
    log = "\n".join(messages)
    assert f"waiting for another process preparing CIFAR10_x32 in {tmp_path}" in log
    assert "CIFAR10_x32: already prepared" in log
    arrays = _load(folder)
    for i, key in enumerate(["train_images", "train_labels", "test_images", "test_labels"], start=1):
        np.testing.assert_array_equal(arrays[key], cifar10[i])
    assert _all_files(tmp_path) == sorted(["downloads/cifar-10-python.tar.gz"]  # no .part, lock or temporary left
                                          + [f"CIFAR10_x32/{f}" for f in PREPARED_FILES])


def _bad_data_root(tmp_path: Path, kind: str) -> Path:
    if kind == "file":
        (tmp_path / "a-file").write_text("not a folder")
        return tmp_path / "a-file"
    if kind == "uncreatable":
        return Path("/proc/nope")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder if not os.access(folder, os.W_OK) else Path("/sys")  # root ignores the mode; sysfs refuses root


@pytest.mark.skipif(not Path("/proc").is_dir() or not Path("/sys").is_dir(), reason="needs Linux /proc and /sys")
@pytest.mark.parametrize("kind, message", [
    ("file", r"cannot create data root \S+ \(it exists and is not a folder\)"),
    ("uncreatable", r"cannot create data root /proc/nope \(No such file or directory\)"),
    ("read-only", r"cannot write in data root \S+ \((Permission denied|Operation not permitted|Read-only file system)\)"),
])
def test_unusable_data_root_is_one_clear_error(tmp_path, monkeypatch, closed_url, kind, message):  # noqa: F811
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", b"", closed_url)
    root = _bad_data_root(tmp_path, kind)

    with pytest.raises(DataError, match=message + "; pass a writable folder as --data_root$"):
        prepare_dataset("CIFAR10_x32", root)


def test_a_symlink_planted_at_the_lock_file_is_not_followed(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    outside = tmp_path / "outside" / "created"
    outside.parent.mkdir()
    (tmp_path / ".cifar-10-python.tar.gz.lock").symlink_to(outside)

    with pytest.raises(DataError, match=r"cannot lock \S+/\.cifar-10-python\.tar\.gz\.lock \(a symbolic link"):
        prepare_dataset("CIFAR10_x32", tmp_path)

    assert not outside.exists() and not (tmp_path / "CIFAR10_x32").exists()


def test_preparing_again_replaces_only_the_prepared_files(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    folder = prepare_dataset("CIFAR10_x32", tmp_path)
    (folder / "NOTES.txt").write_text("my notes")
    (folder / "my_augmented").mkdir()
    (folder / "my_augmented" / "flipped.npy").write_bytes(b"mine")
    (folder / "test_labels.npy").write_bytes(b"damaged")
    assert not is_complete(tmp_path, "CIFAR10_x32")

    prepare_dataset("CIFAR10_x32", tmp_path)

    assert is_complete(tmp_path, "CIFAR10_x32")
    np.testing.assert_array_equal(np.load(folder / "test_labels.npy"), cifar10[4])
    assert (folder / "NOTES.txt").read_text() == "my notes"
    assert (folder / "my_augmented" / "flipped.npy").read_bytes() == b"mine"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PREPARED_FILES, "NOTES.txt", "my_augmented"])


def test_a_dataset_folder_that_is_a_link_is_never_written_through(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    """A damaged set elsewhere, linked into the data root: refused in one line (issue 37: every folder written into
    is the tool's own), the link and the files where it leads untouched; so is a link planted as downloads/."""
    elsewhere = tmp_path / "other-disk" / "cifar"
    elsewhere.mkdir(parents=True)
    (elsewhere / "train_images.npy").write_bytes(b"damaged")
    (elsewhere / "NOTES.txt").write_text("mine")
    root = tmp_path / "data"
    root.mkdir()
    (root / "CIFAR10_x32").symlink_to(elsewhere)
    (root / "CIFAR100_x32").symlink_to(tmp_path / "nowhere")
    _place(root, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)

    with pytest.raises(DataError, match=r"CIFAR10_x32 is a symbolic link, and resbench never writes through one"):
        prepare_dataset("CIFAR10_x32", root)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["NOTES.txt", "train_images.npy"]
    assert (elsewhere / "train_images.npy").read_bytes() == b"damaged"
    with pytest.raises(DataError, match=r"CIFAR100_x32 is a symbolic link"):
        write_dataset(root, "CIFAR100_x32", {})
    other = tmp_path / "other"
    other.mkdir()
    (other / "downloads").symlink_to(root / "downloads")
    with pytest.raises(DataError, match=r"downloads: a symbolic link stands there; resbench never writes through one"):
        prepare_dataset("CIFAR10_x32", other)
    assert sorted(p.name for p in (root / "downloads").iterdir()) == ["cifar-10-python.tar.gz"]


def test_stale_temporaries_of_a_killed_preparation_are_removed(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    """Only this archive's, which its lock guards: another archive's may belong to a live process."""
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    stale = [tmp_path / ".CIFAR10_x32.tmp-abcd1234", tmp_path / "downloads" / ".extract-cifar-10-python.tar.gz-abcd1234"]
    kept = [tmp_path / ".CIFAR100_x32.tmp-abcd1234", tmp_path / "downloads" / ".extract-tiny-imagenet-200.zip-x1",
            tmp_path / "my.tmp-folder",
            # named as a temporary of this archive but not made by the tool (issue 37): another length, no mark
            tmp_path / ".CIFAR10_x32.tmp-mine", tmp_path / ".CIFAR10_x32.tmp-abcd12345", tmp_path / ".CIFAR10_x32.tmp-zyxw9876"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "x.npy").write_bytes(b"x" * 1000)
    for folder in [*stale, *kept[:-1]]:
        (folder / TEMPORARY_MARK).write_text("")

    prepare_dataset("CIFAR10_x32", tmp_path)

    assert [f for f in stale if f.exists()] == [] and all(f.exists() for f in kept)


def test_a_failed_preparation_leaves_no_empty_data_root(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)

    with pytest.raises(DataError, match="not found in mirror folder"):
        prepare_dataset("CIFAR10_x32", tmp_path / "new" / "data", mirror=str(tmp_path / "missing"))

    assert list(tmp_path.iterdir()) == []


def test_data_list_of_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["data", "list", "--data_root", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err == (f"error: data root {tmp_path / 'a-file'} is not a folder; pass the folder "
                                       "that holds the datasets as --data_root\n")
