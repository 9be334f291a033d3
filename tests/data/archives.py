"""Small archives in the official formats, built in memory, and the local HTTP server that serves them: what the
offline tests of resbench.data.fetch (tests/data/fetch/) and of the evaluation-only sets download and prepare.

A test module that prepares the mini archives imports `mini_num_train`, which makes their training splits count
as complete."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import LIMIT
from resbench.data import recipes
from resbench.data.facts import DATASETS, PREPARED_FILES
from resbench.data.fetch import download

PER_BATCH = 20


REAL_SPECS = dict(DATASETS)


@pytest.fixture(autouse=True)
def mini_num_train(monkeypatch):
    """The mini archives hold 8 to 100 training images: train on the first 4, so they count as complete.

    This holds in this process only; a `resbench` subprocess checks against the real sizes.
    """
    for name, spec in REAL_SPECS.items():
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, num_train=4))


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
