"""Offline tests of resbench.data.fetch: small archives in the official formats, served from 127.0.0.1."""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import io
import os
import pickle
import socket
import tarfile
import threading
import time
import weakref
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import LIMIT, wait_until
from resbench.cli.main import main
from resbench.data import recipes
from resbench.data.facts import DATASETS, PREPARED_FILES, DatasetSpec
from resbench.data.fetch import download, prepare, store
from resbench.data.fetch.archive import Archive, safe_extract
from resbench.data.fetch.prepare import (
    dataset_status,
    is_complete,
    prepare_dataset,
    prepare_datasets,
    training_datasets,
)
from resbench.data.fetch.store import write_dataset
from resbench.data.prepared import load_splits
from resbench.data.recipes import cifar
from resbench.errors import DataError, DataFileError
from resbench.files import TEMPORARY_MARK

PER_BATCH = 20
REAL_SPECS = dict(DATASETS)


@pytest.fixture(autouse=True)
def mini_num_train(monkeypatch):
    """The mini archives hold 8 to 100 training images: train on the first 4, so they count as complete.

    This holds in this process only; a `resbench` subprocess checks against the real sizes.
    """
    for name, spec in REAL_SPECS.items():
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, num_train=4))


# ----------------------------------------------------------------------------- archive builders


def _pickle_like_official(obj: dict) -> bytes:
    """Pickle with bytes keys and the numpy-1 module name that the official batches use."""
    return pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _planar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> official CIFAR rows: 1024 R, 1024 G, 1024 B, each row-major 32x32."""
    return np.concatenate([images[..., c].reshape(len(images), 1024) for c in range(3)], axis=1)


def _tar_gz(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cifar_batch(rng: np.random.Generator, label_key: bytes, classes: int) -> tuple[dict, np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, (PER_BATCH, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, PER_BATCH)
    batch = {b"batch_label": b"batch", b"data": _planar_rows(images), label_key: labels.tolist(),
             b"filenames": [b"img%d.png" % i for i in range(PER_BATCH)]}
    return batch, images, labels


@pytest.fixture(scope="module")
def cifar10():
    """(archive bytes, train images, train labels, test images, test labels) of a mini CIFAR-10."""
    rng = np.random.default_rng(10)
    members, parts = {}, []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch, images, labels = _cifar_batch(rng, b"labels", 10)
        members[f"cifar-10-batches-py/{name}"] = _pickle_like_official(batch)
        parts.append((images, labels))
    members["cifar-10-batches-py/batches.meta"] = _pickle_like_official({b"label_names": [b"x"] * 10})
    train_images = np.concatenate([images for images, _ in parts[:5]])
    train_labels = np.concatenate([labels for _, labels in parts[:5]])
    return _tar_gz(members), train_images, train_labels, *parts[5]


@pytest.fixture(scope="module")
def cifar100():
    """(archive bytes, {split: (images, fine labels)}) of a mini CIFAR-100 with distinct coarse labels."""
    rng = np.random.default_rng(100)
    members, expected = {}, {}
    for split in ("train", "test"):
        batch, images, labels = _cifar_batch(rng, b"fine_labels", 100)
        batch[b"coarse_labels"] = (labels // 5 + 1).tolist()
        members[f"cifar-100-python/{split}"] = _pickle_like_official(batch)
        expected[split] = (images, labels)
    members["cifar-100-python/meta"] = _pickle_like_official({b"fine_label_names": [b"x"] * 100})
    return _tar_gz(members), expected


TINY_WNIDS = ["n03", "n01", "n02"]  # deliberately not sorted: class id = line index
TINY_TRAIN_COUNTS = {"n03": 3, "n01": 2, "n02": 3}
TINY_VAL = {"val_3.JPEG": "n02", "val_0.JPEG": "n03", "val_4.JPEG": "n01", "val_1.JPEG": "n01", "val_2.JPEG": "n02"}


def _jpeg(rng: np.random.Generator, gray: bool = False) -> bytes:
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    img = img.convert("L") if gray else img
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny():
    """(zip bytes, {member name: JPEG bytes}) of a 3-class TinyImageNet; one image is grayscale."""
    rng = np.random.default_rng(200)
    root = "tiny-imagenet-200"
    jpegs = {}
    for wnid, count in TINY_TRAIN_COUNTS.items():
        for i in reversed(range(count)):  # stored out of order: the reader must sort
            jpegs[f"{root}/train/{wnid}/images/{wnid}_{i}.JPEG"] = _jpeg(rng, gray=(wnid, i) == ("n01", 1))
    for filename in TINY_VAL:
        jpegs[f"{root}/val/images/{filename}"] = _jpeg(rng)
    other = {
        f"{root}/wnids.txt": "\n".join(TINY_WNIDS) + "\n",
        f"{root}/words.txt": "".join(f"{w}\tthing {w}\n" for w in TINY_WNIDS),
        f"{root}/val/val_annotations.txt": "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in TINY_VAL.items()),
        f"{root}/train/n01/n01_boxes.txt": "n01_0.JPEG\t0\t0\t63\t63\n",
        f"{root}/test/images/test_0.JPEG": _jpeg(rng),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in {**other, **jpegs}.items():
            zf.writestr(name, data)
    return buffer.getvalue(), jpegs


# ----------------------------------------------------------------------------- local HTTP server


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files; can ignore Range, cut the first responses short, stall, hold every
    response until the test opens server.gate, leave out Content-Length, trickle the headers or
    the body (one byte every `trickle` seconds, until the client hangs up), or give a 404 a reason."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        server = self.server
        data = server.files.get(self.path)
        requested = self.headers.get("Range")
        if data is None:
            server.log.append((self.path, requested, 404))
            self.send_error(404, server.reason)
            return
        if server.trickle_headers:
            self._trickle(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx")
            return
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested and server.honor_range else 0
        status = 206 if start else 200
        server.log.append((self.path, requested, status))
        if server.gate:
            server.gate.wait(LIMIT)
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not server.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.trickle:
            self._trickle(body)
        elif server.stall:
            self.wfile.write(body[:10])
            self.wfile.flush()
            time.sleep(server.stall)
        elif server.drops:
            server.drops -= 1
            self.wfile.write(body[: len(body) // 2])  # then the connection closes
        else:
            self.wfile.write(body)

    def _trickle(self, data: bytes) -> None:
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(self.server.trickle or self.server.trickle_headers)
        except OSError:  # the client hung up, as it should
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A file server on 127.0.0.1 with a random port; `server.url` ends with a slash."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.log = {}, []
    httpd.honor_range, httpd.drops, httpd.stall, httpd.gate = True, 0, 0, None
    httpd.no_length, httpd.trickle, httpd.trickle_headers, httpd.reason = False, 0, 0, None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url():
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _use_archive(monkeypatch, filename: str, data: bytes, base_url: str, md5: str | None = None,
                 size: int | None = None) -> None:
    """Point every dataset using `filename` at base_url, expecting the md5 of `data` (or `md5`) and `size` bytes."""
    for name, recipe in recipes.RECIPES.items():
        if recipe.source and recipe.source.filename == filename:
            new = download.Source(filename, base_url + filename, md5 or hashlib.md5(data).hexdigest(), size)
            monkeypatch.setitem(recipes.RECIPES, name, dataclasses.replace(recipe, source=new))


def _place(data_root: Path, filename: str, data: bytes) -> Path:
    path = data_root / "downloads" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _load(folder: Path) -> dict[str, np.ndarray]:
    return {name.removesuffix(".npy"): np.load(folder / name, allow_pickle=False) for name in PREPARED_FILES}


# ----------------------------------------------------------------------------- round trips


def test_cifar10_round_trip_is_pixel_exact(tmp_path, monkeypatch, server, cifar10):
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


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch, cifar100, closed_url):
    archive, expected = cifar100
    _place(tmp_path, "cifar-100-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-100-python.tar.gz", archive, closed_url)

    arrays = _load(prepare_dataset("CIFAR100_x32", tmp_path))

    for split in ("train", "test"):
        np.testing.assert_array_equal(arrays[f"{split}_images"], expected[split][0])
        np.testing.assert_array_equal(arrays[f"{split}_labels"], expected[split][1])


def test_tinyimagenet_both_variants_from_one_decode(tmp_path, monkeypatch, server, tiny, closed_url):
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


# ----------------------------------------------------------------------------- verification


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, monkeypatch, server, cifar10):
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


def test_placed_archive_with_wrong_checksum_is_refused_but_kept(tmp_path, monkeypatch, cifar10, closed_url):
    placed = _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url, md5="f" * 32)

    with pytest.raises(DataError, match="checksum mismatch for cifar-10-python.tar.gz"):
        prepare_dataset("CIFAR10_x32", tmp_path)

    assert placed.exists() and not (tmp_path / "CIFAR10_x32").exists()


def test_an_unpickled_batch_is_freed_as_soon_as_it_is_dropped():
    """Not when the garbage collector next runs: the restricted unpickler's bound constructors in its memo
    made a cycle that held each batch (1.6 GB of 64 px ImageNet) until then."""
    content = pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [1, 2, 3, 4]})
    gc.disable()
    try:
        batch = cifar.unpickle_batch(content, "a batch")
        kept = weakref.ref(batch["data"])
        del batch
        assert kept() is None
    finally:
        gc.enable()


def test_malicious_pickle_is_refused(tmp_path, monkeypatch, closed_url):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    members = {f"cifar-10-batches-py/{n}": pickle.dumps({b"data": Payload()})
               for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    archive = _tar_gz(members)
    _place(tmp_path, "cifar-10-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, closed_url)

    with pytest.raises(DataError, match=r"cannot read CIFAR batch data_batch_1 \(forbidden global"):
        prepare_dataset("CIFAR10_x32", tmp_path)

    assert not (tmp_path / "pwned").exists() and not (tmp_path / "CIFAR10_x32").exists()


# ----------------------------------------------------------------------------- download robustness


def test_dropped_download_resumes_with_range(tmp_path, server):
    data = os.urandom(300_000)
    server.files["/blob.bin"] = data
    server.drops = 1
    dest = tmp_path / "blob.bin"
    md5 = hashlib.md5(data).hexdigest()

    with pytest.raises(DataError, match="could not download"):
        download.download(server.url + "blob.bin", dest, md5, tries=1)
    part = tmp_path / "blob.bin.part"
    assert part.stat().st_size == len(data) // 2 and not dest.exists()

    download.download(server.url + "blob.bin", dest, md5, tries=1)

    assert server.log[1] == ("/blob.bin", f"bytes={len(data) // 2}-", 206)
    assert dest.read_bytes() == data and not part.exists()


class FullDisk(io.RawIOBase):
    """A file on a disk that takes `room` bytes, then fails as a full one (ENOSPC)."""

    def __init__(self, path: Path, room: int) -> None:
        self.file, self.room = open(path, "ab"), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


def test_a_full_disk_stops_a_download_at_once_and_the_next_run_resumes_it(tmp_path, server, monkeypatch):
    """Not retried as a network failure, and not called one: the line names the disk; the part is kept."""
    data = os.urandom(3_000_000)
    server.files["/blob.bin"] = data
    dest = tmp_path / "blob.bin"
    md5 = hashlib.md5(data).hexdigest()
    monkeypatch.setattr(download, "open_own_file",
                        lambda path, append=False: io.BufferedWriter(FullDisk(path, 1_000_000)))
    with pytest.raises(DataError) as refused:
        download.download(server.url + "blob.bin", dest, md5, tries=4, backoff=0, size=len(data))
    assert str(refused.value) == (f"cannot write {dest}.part (No space left on device); free space on that disk "
                                  "(the archive is 3,000,000 bytes) or pass another --data_root, then run again: "
                                  "what is written so far is kept and resumed")
    part = Path(f"{dest}.part")
    kept = part.stat().st_size
    assert len(server.log) == 1 and 0 < kept <= 1_000_000 and not dest.exists()
    monkeypatch.undo()
    download.download(server.url + "blob.bin", dest, md5, tries=1, size=len(data))
    assert server.log[1] == ("/blob.bin", f"bytes={kept}-", 206)
    assert dest.read_bytes() == data and not part.exists()


def test_a_dataset_the_disk_has_no_room_for_leaves_nothing_half_written(tmp_path, monkeypatch, cifar10, closed_url):
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


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    data = os.urandom(300_000)
    server.files["/blob.bin"] = data
    server.honor_range, server.drops = False, 1
    dest = tmp_path / "blob.bin"

    download.download(server.url + "blob.bin", dest, hashlib.md5(data).hexdigest(), tries=2, backoff=0)

    assert [(r, s) for _, r, s in server.log] == [(None, 200), (f"bytes={len(data) // 2}-", 200)]
    assert dest.read_bytes() == data


def test_stalled_server_times_out(tmp_path, server):
    server.files["/blob.bin"] = os.urandom(1000)
    server.stall = LIMIT  # the download would take that long if the timeout did not work
    start = time.monotonic()

    with pytest.raises(DataError, match="could not download .*timed out"):
        download.download(server.url + "blob.bin", tmp_path / "blob.bin", None, timeout=0.3, tries=1)

    assert time.monotonic() - start < LIMIT / 2


def test_missing_file_is_not_retried(tmp_path, server):
    start = time.monotonic()
    with pytest.raises(DataError, match="404"):
        download.download(server.url + "nothing.zip", tmp_path / "nothing.zip", None, tries=4, backoff=LIMIT)
    assert time.monotonic() - start < LIMIT / 2 and len(server.log) == 1  # a retry would sleep LIMIT first


# ----------------------------------------------------------------------------- offline and mirrors


def test_placed_archive_needs_no_network(tmp_path, monkeypatch, cifar10, closed_url):
    archive = cifar10[0]
    _place(tmp_path, "cifar-10-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, closed_url)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    folder = prepare_dataset("CIFAR10_x32", tmp_path, mirror=closed_url)

    np.testing.assert_array_equal(np.load(folder / "test_labels.npy"), cifar10[4])


def test_local_mirror_folder(tmp_path, monkeypatch, cifar10, closed_url):
    archive = cifar10[0]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-10-python.tar.gz").write_bytes(archive)
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, closed_url)
    root = tmp_path / "data"

    with pytest.raises(DataError, match="not found in mirror folder"):
        prepare_dataset("CIFAR100_x32", root, mirror=str(mirror))
    folder = prepare_dataset("CIFAR10_x32", root, mirror=str(mirror))

    assert is_complete(root, "CIFAR10_x32") and folder.is_dir()
    assert (root / "downloads" / "cifar-10-python.tar.gz").read_bytes() == archive


# ----------------------------------------------------------------------------- archive safety


def _evil_tar(tmp_path: Path, kind: str) -> Path:
    info = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": str(tmp_path / "evil.txt")}.get(kind, "evil-link"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../evil.txt"
    elif kind == "abs-symlink":
        info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path / "evil.txt")
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "../evil.txt"
    else:
        info.size = 4
    path = tmp_path / "archives" / f"{kind}.tar"
    path.parent.mkdir(exist_ok=True)
    with tarfile.open(path, "w") as tar:
        safe = tarfile.TarInfo("ok/fine.txt")
        safe.size = 4
        tar.addfile(safe, io.BytesIO(b"fine"))
        tar.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    return path


def _evil_zip(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "archives" / f"{kind}.zip"
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/fine.txt", b"fine")
        if kind == "symlink":
            info = zipfile.ZipInfo("ok/evil-link")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "../../evil.txt")
        else:
            zf.writestr(zipfile.ZipInfo({"dotdot": "../evil.txt", "absolute": "/evil.txt"}[kind]), b"evil")
    return path


@pytest.mark.parametrize("make, kind", [
    (_evil_tar, "dotdot"), (_evil_tar, "absolute"), (_evil_tar, "symlink"), (_evil_tar, "abs-symlink"),
    (_evil_tar, "hardlink"), (_evil_zip, "dotdot"), (_evil_zip, "absolute"), (_evil_zip, "symlink"),
])
def test_unsafe_archive_members_are_refused(tmp_path, make, kind):
    archive = make(tmp_path, kind)
    dest = tmp_path / "out" / "dest"
    before = _all_files(tmp_path)

    with pytest.raises(DataError, match=f"refusing unsafe archive {archive.name}: member"):
        safe_extract(archive, dest)

    assert _all_files(tmp_path) == before and not dest.exists()  # nothing extracted, inside or outside
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_safe_extract_writes_only_requested_members(tmp_path, cifar10):
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(cifar10[0])

    written = safe_extract(archive, tmp_path / "dest", ["cifar-10-batches-py/test_batch"])

    assert written == [(tmp_path / "dest" / "cifar-10-batches-py" / "test_batch").resolve()]
    assert _all_files(tmp_path / "dest") == ["cifar-10-batches-py/test_batch"]


def test_prepare_refuses_archive_with_dotdot_member(tmp_path, monkeypatch, closed_url):
    archive = _tar_gz({"cifar-10-batches-py/test_batch": b"x", "../escaped": b"x"})
    _place(tmp_path / "data", "cifar-10-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, closed_url)

    with pytest.raises(DataError, match="refusing unsafe archive .*'../escaped'"):
        prepare_dataset("CIFAR10_x32", tmp_path / "data")

    assert not (tmp_path / "escaped").exists() and not (tmp_path / "data" / "CIFAR10_x32").exists()


def test_damaged_archive_without_verification_is_reported(tmp_path, monkeypatch, cifar10, closed_url, capfd):
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0][: len(cifar10[0]) // 2])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)

    with pytest.raises(DataError, match="cifar-10-python.tar.gz is damaged .*delete it and download again"):
        prepare_dataset("CIFAR10_x32", tmp_path, verify=False)

    assert "warning: --no_verify" in capfd.readouterr().err
    assert not (tmp_path / "CIFAR10_x32").exists()


def test_a_member_whose_bytes_do_not_match_its_crc_is_one_line(tmp_path):
    """The zip's directory is intact, so it opens; the damage shows when the member is read (zipfile's
    BadZipFile came through as a traceback)."""
    content = io.BytesIO()
    with zipfile.ZipFile(content, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("folder/member", bytes(1000))
    damaged = bytearray(content.getvalue())
    damaged[500] ^= 0xFF  # inside the member's data
    (tmp_path / "a.zip").write_bytes(damaged)

    with Archive(tmp_path / "a.zip") as archive, \
            pytest.raises(DataError, match=r"a\.zip is damaged: its member folder/member cannot be read \(Bad CRC-32"):
        archive.read("folder/member")


# ----------------------------------------------------------------------------- atomic preparation and status


def test_interrupted_preparation_leaves_no_dataset(tmp_path, monkeypatch, cifar10, closed_url):
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


def test_data_list_reports_complete_missing_and_damaged(tmp_path, monkeypatch, run_cli, cifar10, closed_url):
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


def test_cli_download_errors_cleanly_then_no_verify_warns(tmp_path, cli, cifar10):
    placed = _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])  # tiny archive: not the official md5

    refused = cli("data", "download", "CIFAR10_x32", "--data_root", tmp_path)
    forced = cli("data", "download", "CIFAR10_x32", "--data_root", tmp_path, "--no_verify")

    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: checksum mismatch for cifar-10-python.tar.gz: expected md5 c58f30108f718f92721af3b95e74349a")
    assert placed.exists()
    assert forced.returncode == 0, forced.stderr
    assert "warning" in forced.stderr and is_complete(tmp_path, "CIFAR10_x32")


def test_cli_download_all_offline(tmp_path, cli, cifar10, cifar100, tiny):
    for filename, archive in [("cifar-10-python.tar.gz", cifar10[0]), ("cifar-100-python.tar.gz", cifar100[0]),
                              ("tiny-imagenet-200.zip", tiny[0])]:
        _place(tmp_path, filename, archive)

    proc = cli("data", "download", "all", "--data_root", tmp_path, "--no_verify", "--mirror", "http://127.0.0.1:9/")

    assert proc.returncode == 0, proc.stderr
    assert all(row["complete"] for row in dataset_status(tmp_path) if row["name"] in training_datasets())
    assert proc.stderr.count("preparing") == 3  # one pass per archive: both TinyImageNet sizes together


def test_train_prepares_a_missing_dataset_itself(tmp_path, monkeypatch, server, cifar10, capfd):
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


def test_too_few_training_images_is_not_prepared(tmp_path, monkeypatch, cifar10, closed_url, capfd):
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


# ----------------------------------------------------------------------------- concurrency and bad data roots


def test_concurrent_preparations_take_turns(tmp_path, monkeypatch, server, cifar10):
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
def test_unusable_data_root_is_one_clear_error(tmp_path, monkeypatch, closed_url, kind, message):
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", b"", closed_url)
    root = _bad_data_root(tmp_path, kind)

    with pytest.raises(DataError, match=message + "; pass a writable folder as --data_root$"):
        prepare_dataset("CIFAR10_x32", root)


# ----------------------------------------------------------------------------- hostile files and servers (issue 14)


@pytest.mark.parametrize("target", ["victim.txt", "created-outside"])
def test_a_symlink_planted_at_the_part_file_is_not_followed(tmp_path, server, target):
    server.files["/blob.bin"] = os.urandom(1000)
    (tmp_path / "victim.txt").write_text("mine")
    part = tmp_path / "downloads" / "blob.bin.part"
    part.parent.mkdir()
    part.symlink_to(tmp_path / target)

    with pytest.raises(DataError, match=r"cannot download into \S+blob.bin.part \(it is a link .*remove it"):
        download.download(server.url + "blob.bin", tmp_path / "downloads" / "blob.bin", None, tries=1)

    assert (tmp_path / "victim.txt").read_text() == "mine" and not (tmp_path / "created-outside").exists()
    assert server.log == [] and part.is_symlink()  # refused before asking the server


def test_a_symlink_planted_at_the_lock_file_is_not_followed(tmp_path, monkeypatch, cifar10, closed_url):
    _place(tmp_path, "cifar-10-python.tar.gz", cifar10[0])
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)
    outside = tmp_path / "outside" / "created"
    outside.parent.mkdir()
    (tmp_path / ".cifar-10-python.tar.gz.lock").symlink_to(outside)

    with pytest.raises(DataError, match=r"cannot lock \S+/\.cifar-10-python\.tar\.gz\.lock \(a symbolic link"):
        prepare_dataset("CIFAR10_x32", tmp_path)

    assert not outside.exists() and not (tmp_path / "CIFAR10_x32").exists()


def test_preparing_again_replaces_only_the_prepared_files(tmp_path, monkeypatch, cifar10, closed_url):
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


def test_a_dataset_folder_that_is_a_link_is_never_written_through(tmp_path, monkeypatch, cifar10, closed_url):
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


def test_stale_temporaries_of_a_killed_preparation_are_removed(tmp_path, monkeypatch, cifar10, closed_url):
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


def test_a_failed_preparation_leaves_no_empty_data_root(tmp_path, monkeypatch, cifar10, closed_url):
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", cifar10[0], closed_url)

    with pytest.raises(DataError, match="not found in mirror folder"):
        prepare_dataset("CIFAR10_x32", tmp_path / "new" / "data", mirror=str(tmp_path / "missing"))

    assert list(tmp_path.iterdir()) == []


def test_data_list_of_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["data", "list", "--data_root", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err == (f"error: data root {tmp_path / 'a-file'} is not a folder; pass the folder "
                                       "that holds the datasets as --data_root\n")


class _Zeros(io.RawIOBase):
    def readable(self):
        return True

    def readinto(self, buffer):
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def _bomb(tmp_path: Path, kind: str) -> Path:
    """A 200 MiB member of zeros, compressed to about 200 KB."""
    size, name = 200 * 2**20, "cifar-10-batches-py/data_batch_1"
    path = tmp_path / f"bomb.{kind}"
    if kind == "tar.gz":
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Zeros())
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as member:
            for _ in range(size // 2**20):
                member.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    return path


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_decompression_bomb_is_refused_from_its_headers(tmp_path, kind):
    bomb = _bomb(tmp_path, kind)
    with pytest.raises(DataError, match=rf"refusing archive bomb.{kind}: it would unpack to .*209,715,200 bytes"
                                              ".*a decompression bomb"):
        Archive(bomb)


def _pickle_asking_for(kind: str) -> bytes:
    """A CIFAR batch pickle whose allowed constructors (or opcodes) ask for 10^13 bytes."""
    huge = 10**13
    if kind == "opcode":  # BINBYTES8 announcing 10^13 bytes
        return b"\x80\x04\x8e" + huge.to_bytes(8, "little") + b"x" * 16 + b"."

    class Call:
        def __reduce__(self):
            if kind == "bytes":
                return bytes, (huge,)
            if kind == "ndarray":
                return np.ndarray, ((huge,), "u1")
            return cifar._NUMPY_RECONSTRUCT, (np.ndarray, (huge,), b"b")

    return pickle.dumps({b"data": Call(), b"labels": [0]}, protocol=3)


@pytest.mark.parametrize("kind", ["bytes", "ndarray", "reconstruct", "opcode"])
def test_a_cifar_pickle_cannot_allocate_more_than_it_holds(tmp_path, kind):
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(_pickle_asking_for(kind))
    with pytest.raises(DataError, match=r"cannot read CIFAR batch data_batch_1 \(.*(10,000,000,000,000 bytes|"
                                              r"truncated|MemoryError)"):
        cifar.load_batch(batch, b"labels")


def test_a_trickling_server_is_cut_off(tmp_path, server):
    """One byte every 0.05 s would take hours; the minimum rate ends the attempt after its first window."""
    server.files["/blob.bin"] = os.urandom(LIMIT * 20)
    server.trickle = 0.05
    with pytest.raises(DataError, match=r"could not download .*under the minimum of 1,000 bytes/s"):
        download.download(server.url + "blob.bin", tmp_path / "blob.bin", None, tries=1, min_rate=1000, window=0.5)


def test_a_server_trickling_its_headers_is_cut_off(tmp_path, server):
    server.files["/blob.bin"] = b"x"
    server.trickle_headers = 0.05  # headers of LIMIT * 20 bytes, one every 0.05 s
    with pytest.raises(DataError, match=r"could not download .*no complete response within 0.5 s"):
        download.download(server.url + "blob.bin", tmp_path / "blob.bin", None, tries=1, window=0.5)


@pytest.mark.parametrize("announced", [True, False], ids=["content_length", "no_length"])
def test_a_response_larger_than_the_archive_is_refused(tmp_path, monkeypatch, server, cifar10, announced):
    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive + os.urandom(300_000)
    server.no_length = not announced
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url, size=len(archive))
    reason = "it is announced as .* bytes, but the archive is" if announced else "it is larger than the archive's"

    with pytest.raises(DataError, match=f"refusing the download of .*cifar-10-python.tar.gz: {reason}"):
        prepare_dataset("CIFAR10_x32", tmp_path, verify=False)

    assert list(tmp_path.iterdir()) == []  # nothing of it written, or kept


def test_a_content_length_other_than_the_archive_size_is_refused_when_verifying(tmp_path, monkeypatch, server, cifar10):
    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive[:-1000]
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url, size=len(archive))

    with pytest.raises(DataError, match=rf"announced as {len(archive) - 1000:,} bytes, but the archive is"):
        prepare_dataset("CIFAR10_x32", tmp_path)
    assert list(tmp_path.iterdir()) == []
    shorter = download.download(server.url + "cifar-10-python.tar.gz", tmp_path / "a", None, size=len(archive))
    assert shorter.stat().st_size == len(archive) - 1000  # unverified (--no_verify), a smaller one is allowed


def test_a_servers_status_text_is_printed_without_terminal_escapes(tmp_path, server):
    server.reason = "Not Found\x1b[2J\x1b]0;pwned\x07"
    with pytest.raises(DataError) as excinfo:
        download.download(server.url + "nothing.zip", tmp_path / "nothing.zip", None, tries=1)
    message = str(excinfo.value)
    assert "HTTP Error 404: Not Found\\x1b[2J\\x1b]0;pwned\\x07" in message and "\x1b" not in message


def test_a_server_trickling_its_tls_handshake_is_cut_off(tmp_path):
    """A TLS record header announcing 16 KiB, then one byte every 0.05 s: the handshake would take 14 minutes."""
    listener = socket.create_server(("127.0.0.1", 0))
    hung_up = threading.Event()

    def trickle():
        connection, _ = listener.accept()
        try:
            connection.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB, the most TLS allows
            while not hung_up.wait(0.05):
                connection.sendall(b"\x00")
        except OSError:  # the client hung up, as it should
            pass
        finally:
            connection.close()

    threading.Thread(target=trickle, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/cifar-10-python.tar.gz"
    try:
        with pytest.raises(DataError, match=r"could not download .*no complete response within 0.5 s"):
            download.download(url, tmp_path / "a.tar.gz", None, tries=1, window=0.5)
    finally:
        hung_up.set()
        listener.close()
