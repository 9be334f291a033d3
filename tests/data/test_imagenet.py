"""Downsampled ImageNet from archives in the official formats (both variants, 10 training batches, labels
1..1000), a few images each: the counts the reader expects are shrunk in `facts.DATASETS`, as the fetch
tests shrink theirs (tests/data/archives.py)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import pickle
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from resbench.data.facts import DATASETS, PREPARED_FILES
from resbench.data.fetch.prepare import prepare_dataset, training_datasets
from resbench.data.prepared import load_splits
from resbench.errors import DataError

BATCHES = [3, 3, 3, 3, 3, 3, 3, 3, 3, 4]  # nine equal batches and a longer last one, as the official 32 px set
VAL = 5


@pytest.fixture(autouse=True)
def small_specs(monkeypatch):
    for name in ("ImageNet1k_x32", "ImageNet1k_x64"):
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], num_train=sum(BATCHES),
                                                                num_test=VAL))


def official_set(size: int, seed: int = 0) -> dict:
    """NHWC images and labels 1..1000 (both ends among them) of the 10 batches and the validation set."""
    rng = np.random.default_rng(seed)
    split = lambda n: (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),  # noqa: E731
                       rng.integers(1, 1001, n))
    batches = [split(n) for n in BATCHES]
    batches[0][1][:2] = (1, 1000)
    return {"train": batches, "val": split(VAL)}


def planar(images: np.ndarray) -> np.ndarray:
    """NHWC images as the official rows: all red, then green, then blue, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def npz_member(images: np.ndarray, labels, **extra) -> bytes:
    out = io.BytesIO()
    np.savez(out, data=planar(images), labels=np.asarray(labels), mean=np.zeros(planar(images).shape[1]), **extra)
    return out.getvalue()


def pickled_member(images: np.ndarray, labels) -> bytes:
    return pickle.dumps({"data": planar(images), "labels": [int(v) for v in labels], "mean": np.zeros(3)})


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def official_archives(data: dict, size: int, variant: str, folder: str | None = None) -> dict[str, bytes]:
    """The archives' bytes by official name; members in a folder named after the archive (or `folder`)."""
    suffix, ext = ("_npz", ".npz") if variant == "npz" else ("", "")
    member = npz_member if variant == "npz" else pickled_member
    parts = {"_train": range(10)} if size == 32 else {"_train_part1": range(5), "_train_part2": range(5, 10)}
    archives = {}
    for part, batches in parts.items():
        name = f"Imagenet{size}{part}{suffix}"
        archives[f"{name}.zip"] = zip_bytes({f"{folder or name}/train_data_batch_{i + 1}{ext}": member(*data["train"][i])
                                             for i in batches})
    name = f"Imagenet{size}_val{suffix}"
    archives[f"{name}.zip"] = zip_bytes({f"{folder or name}/val_data{ext}": member(*data["val"])})
    return archives


def place(root: Path, archives: dict[str, bytes]) -> Path:
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for name, data in archives.items():
        (downloads / name).write_bytes(data)
    return downloads


def expected(data: dict) -> dict[str, np.ndarray]:
    return {"train_images": np.concatenate([images for images, _ in data["train"]]),
            "train_labels": np.concatenate([labels for _, labels in data["train"]]) - 1,
            "test_images": data["val"][0], "test_labels": data["val"][1] - 1}


def assert_prepared_exactly(folder: Path, data: dict) -> None:
    for name, want in expected(data).items():
        got = np.load(folder / f"{name}.npy", allow_pickle=False)
        assert got.dtype == (np.uint8 if "images" in name else np.int64)
        np.testing.assert_array_equal(got, want)


def every_file(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror_url(tmp_path):
    """A web server on 127.0.0.1 serving tmp_path/mirror."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_the_npz_variant_from_a_mirror_is_prepared_pixel_exact_with_its_sha256(tmp_path, mirror_url):
    folder, url = mirror_url
    data = official_set(32)
    archives = official_archives(data, 32, "npz")
    for name, content in archives.items():
        (folder / name).write_bytes(content)

    prepared = prepare_dataset("ImageNet1k_x32", tmp_path / "data", mirror=url)

    assert_prepared_exactly(prepared, data)
    sources = json.loads((prepared / "sources.json").read_text())
    assert sources["variant"] == "npz"
    assert {a["name"]: a["sha256"] for a in sources["archives"]} == {
        name: hashlib.sha256(content).hexdigest() for name, content in archives.items()}
    splits = load_splits("ImageNet1k_x32", tmp_path / "data")
    assert splits.val_images is splits.test_images and len(splits.train_images) == sum(BATCHES)


def test_archives_from_a_mirror_are_never_written_through_a_link_planted_as_downloads(tmp_path, mirror_url):
    """<data_root>/downloads is a folder of the tool's own (`files.own_folder`): a link there is refused before
    any archive is fetched into it."""
    folder, url = mirror_url
    for name, content in official_archives(official_set(32), 32, "npz").items():
        (folder / name).write_bytes(content)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "downloads").symlink_to(elsewhere)
    with pytest.raises(DataError, match=r"/data/downloads: .*link.*; move it away"):
        prepare_dataset("ImageNet1k_x32", tmp_path / "data", mirror=url)
    assert list(elsewhere.iterdir()) == [] and every_file(tmp_path / "data") == ["downloads"]


def test_the_pickled_variant_at_64px_over_two_archives_is_found_by_file_name(tmp_path):
    data = official_set(64, seed=1)
    place(tmp_path, official_archives(data, 64, "pickled", folder="some/other folder"))

    assert_prepared_exactly(prepare_dataset("ImageNet1k_x64", tmp_path), data)
    assert "ImageNet1k_x64" not in training_datasets()  # `data download all` does not ask for it


def test_without_the_archives_one_line_says_which_files_go_where(tmp_path, cli):
    root = tmp_path / "data"
    done = cli("data", "download", "ImageNet1k_x64", "--data_root", root)

    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    line = done.stderr
    for name in ("Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip",
                 "Imagenet64_train_part1.zip", "Imagenet64_val.zip", str((root / "downloads").resolve())):
        assert name in line
    assert not root.exists()  # nothing made


def label(value: int):
    def change(data):
        data["train"][3][1][0] = value
    return change


def one_image_short(data):
    data["train"][9] = (data["train"][9][0][:-1], data["train"][9][1][:-1])


@pytest.mark.parametrize("variant, change, message", [
    ("npz", one_image_short, r"Imagenet32_train_npz\.zip: the training batches hold 30 images, not ImageNet1k_x32's 31"),
    ("npz", label(0), r"train_data_batch_4\.npz holds labels from 0 to \d+, not 1\.\.1000"),
    ("pickled", label(1001), r"train_data_batch_4 holds labels from \d+ to 1001, not 1\.\.1000"),
])
def test_a_crafted_set_is_refused_in_one_line_with_nothing_left_behind(tmp_path, variant, change, message):
    data = official_set(32)
    change(data)
    place(tmp_path, official_archives(data, 32, variant))
    before = every_file(tmp_path)

    with pytest.raises(DataError, match=message) as refused:
        prepare_dataset("ImageNet1k_x32", tmp_path)

    assert "\n" not in str(refused.value) and every_file(tmp_path) == before


def with_batch_2(archives, data_npy: bytes, labels_npy: bytes) -> None:
    """The .npz of batch 2 replaced by one of these data.npy and labels.npy bytes."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as npz:
        npz.writestr("data.npy", data_npy)
        npz.writestr("labels.npy", labels_npy)
    with zipfile.ZipFile(io.BytesIO(archives["Imagenet32_train_npz.zip"])) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["Imagenet32_train_npz/train_data_batch_2.npz"] = inner.getvalue()
    archives["Imagenet32_train_npz.zip"] = zip_bytes(members)


def truncated_member(archives):
    """The data.npy of batch 2 cut short inside its .npz."""
    data = io.BytesIO()
    np.save(data, planar(np.zeros((3, 32, 32, 3), np.uint8)))
    with_batch_2(archives, data.getvalue()[:-100], b"")


def declared_shape(shape: tuple, size: int):
    """Batch 2's data.npy declaring `shape` over `size` bytes, the shape's product: of no array numpy can make."""
    def damage(archives):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with_batch_2(archives, header.getvalue() + bytes(size), b"")
    return damage


def truncated_archive(archives):
    archives["Imagenet32_val_npz.zip"] = archives["Imagenet32_val_npz.zip"][:-100]


def flipped_byte(archives):
    content = bytearray(archives["Imagenet32_val_npz.zip"])
    content[len(content) // 2] ^= 0xFF
    archives["Imagenet32_val_npz.zip"] = bytes(content)


def code_in_a_pickle(archives):
    class Payload:
        def __reduce__(self):
            return os.system, ("touch pwned",)
    archives["Imagenet32_val.zip"] = zip_bytes({"Imagenet32_val/val_data": pickle.dumps({"data": Payload()})})


def shared_lists_in_a_pickle(archives):
    """2^21 labels in a pickle of 200 bytes: nested lists, each held twice by the memo (numpy would visit and
    allocate them all; 40 levels would never end)."""
    nested: list = [1, 1]
    for _ in range(20):
        nested = [nested, nested]
    archives["Imagenet32_val.zip"] = zip_bytes({"Imagenet32_val/val_data": pickle.dumps(
        {"data": planar(np.zeros((VAL, 32, 32, 3), np.uint8)), "labels": nested})})


@pytest.mark.parametrize("variant, damage, message", [
    ("npz", truncated_member, r"Imagenet32_train_npz\.zip: Imagenet32_train_npz/train_data_batch_2\.npz: data "
                              r"declares uint8 \(3, 3072\) \(9216 bytes\) but holds 9116 bytes"),
    ("npz", declared_shape((-2, -3072), 6144), r"batch_2\.npz: data declares the shape \(-2, -3072\), which no array"),
    ("npz", declared_shape((0, 2**62, 2**62), 0), r"batch_2\.npz: data declares the shape \(0, 4611686018427387904, "),
    ("npz", truncated_archive, r"Imagenet32_val_npz\.zip is neither a tar nor a zip archive"),
    ("npz", flipped_byte, r"Imagenet32_val_npz\.zip is damaged: its member Imagenet32_val_npz/val_data\.npz cannot"),
    ("pickled", code_in_a_pickle, r"cannot read Imagenet32_val\.zip: Imagenet32_val/val_data \(forbidden global"),
    ("pickled", shared_lists_in_a_pickle, r"Imagenet32_val\.zip: Imagenet32_val/val_data: its labels is no array \(a "
                                          r"list of other things than integers"),
])
def test_a_damaged_archive_is_one_line_naming_it_with_nothing_left_behind(tmp_path, monkeypatch, variant, damage,
                                                                        message):
    archives = official_archives(official_set(32), 32, variant)
    damage(archives)
    place(tmp_path, archives)
    monkeypatch.chdir(tmp_path)
    before = every_file(tmp_path)

    with pytest.raises(DataError, match=message) as refused:
        prepare_dataset("ImageNet1k_x32", tmp_path)

    assert "\n" not in str(refused.value) and every_file(tmp_path) == before  # no pwned, no dataset


def test_a_prepared_set_of_another_count_is_not_complete(tmp_path):
    data = official_set(32)
    place(tmp_path, official_archives(data, 32, "npz"))
    folder = prepare_dataset("ImageNet1k_x32", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PREPARED_FILES, "sources.json"])
    np.save(folder / "train_images.npy", np.zeros((sum(BATCHES) + 1, 32, 32, 3), np.uint8))
    np.save(folder / "train_labels.npy", np.zeros(sum(BATCHES) + 1, np.int64))

    with pytest.raises(Exception, match="holds 32 images; ImageNet1k_x32 has 31 \\(its whole training set\\)"):
        load_splits("ImageNet1k_x32", tmp_path)
