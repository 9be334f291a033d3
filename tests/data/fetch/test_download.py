"""Downloading an official archive (data/fetch/download.py), offline: served from 127.0.0.1, resumed where a
dropped connection or a full disk stopped it, cut off where a server stalls or trickles, refused where it sends
more than the archive; placed by hand or in a mirror folder, no network at all."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from archives import (
    _place,
    _use_archive,
    cifar10,  # noqa: F401 (fixture)
    closed_url,  # noqa: F401 (fixture)
    mini_num_train,  # noqa: F401 (autouse fixture)
    server,  # noqa: F401 (fixture)
)

from conftest import LIMIT
from resbench.data.fetch import download
from resbench.data.fetch.prepare import (
    is_complete,
    prepare_dataset,
)
from resbench.errors import DataError


def test_dropped_download_resumes_with_range(tmp_path, server):  # noqa: F811
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


def test_a_full_disk_stops_a_download_at_once_and_the_next_run_resumes_it(tmp_path, server, monkeypatch):  # noqa: F811
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


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):  # noqa: F811
    data = os.urandom(300_000)
    server.files["/blob.bin"] = data
    server.honor_range, server.drops = False, 1
    dest = tmp_path / "blob.bin"

    download.download(server.url + "blob.bin", dest, hashlib.md5(data).hexdigest(), tries=2, backoff=0)

    assert [(r, s) for _, r, s in server.log] == [(None, 200), (f"bytes={len(data) // 2}-", 200)]
    assert dest.read_bytes() == data


def test_stalled_server_times_out(tmp_path, server):  # noqa: F811
    server.files["/blob.bin"] = os.urandom(1000)
    server.stall = LIMIT  # the download would take that long if the timeout did not work
    start = time.monotonic()

    with pytest.raises(DataError, match="could not download .*timed out"):
        download.download(server.url + "blob.bin", tmp_path / "blob.bin", None, timeout=0.3, tries=1)

    assert time.monotonic() - start < LIMIT / 2


def test_missing_file_is_not_retried(tmp_path, server):  # noqa: F811
    start = time.monotonic()
    with pytest.raises(DataError, match="404"):
        download.download(server.url + "nothing.zip", tmp_path / "nothing.zip", None, tries=4, backoff=LIMIT)
    assert time.monotonic() - start < LIMIT / 2 and len(server.log) == 1  # a retry would sleep LIMIT first


def test_placed_archive_needs_no_network(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
    archive = cifar10[0]
    _place(tmp_path, "cifar-10-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, closed_url)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    folder = prepare_dataset("CIFAR10_x32", tmp_path, mirror=closed_url)

    np.testing.assert_array_equal(np.load(folder / "test_labels.npy"), cifar10[4])


def test_local_mirror_folder(tmp_path, monkeypatch, cifar10, closed_url):  # noqa: F811
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


@pytest.mark.parametrize("target", ["victim.txt", "created-outside"])
def test_a_symlink_planted_at_the_part_file_is_not_followed(tmp_path, server, target):  # noqa: F811
    server.files["/blob.bin"] = os.urandom(1000)
    (tmp_path / "victim.txt").write_text("mine")
    part = tmp_path / "downloads" / "blob.bin.part"
    part.parent.mkdir()
    part.symlink_to(tmp_path / target)

    with pytest.raises(DataError, match=r"cannot download into \S+blob.bin.part \(it is a link .*remove it"):
        download.download(server.url + "blob.bin", tmp_path / "downloads" / "blob.bin", None, tries=1)

    assert (tmp_path / "victim.txt").read_text() == "mine" and not (tmp_path / "created-outside").exists()
    assert server.log == [] and part.is_symlink()  # refused before asking the server


def test_a_trickling_server_is_cut_off(tmp_path, server):  # noqa: F811
    """One byte every 0.05 s would take hours; the minimum rate ends the attempt after its first window."""
    server.files["/blob.bin"] = os.urandom(LIMIT * 20)
    server.trickle = 0.05
    with pytest.raises(DataError, match=r"could not download .*under the minimum of 1,000 bytes/s"):
        download.download(server.url + "blob.bin", tmp_path / "blob.bin", None, tries=1, min_rate=1000, window=0.5)


def test_a_server_trickling_its_headers_is_cut_off(tmp_path, server):  # noqa: F811
    server.files["/blob.bin"] = b"x"
    server.trickle_headers = 0.05  # headers of LIMIT * 20 bytes, one every 0.05 s
    with pytest.raises(DataError, match=r"could not download .*no complete response within 0.5 s"):
        download.download(server.url + "blob.bin", tmp_path / "blob.bin", None, tries=1, window=0.5)


@pytest.mark.parametrize("announced", [True, False], ids=["content_length", "no_length"])
def test_a_response_larger_than_the_archive_is_refused(tmp_path, monkeypatch, server, cifar10, announced):  # noqa: F811
    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive + os.urandom(300_000)
    server.no_length = not announced
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url, size=len(archive))
    reason = "it is announced as .* bytes, but the archive is" if announced else "it is larger than the archive's"

    with pytest.raises(DataError, match=f"refusing the download of .*cifar-10-python.tar.gz: {reason}"):
        prepare_dataset("CIFAR10_x32", tmp_path, verify=False)

    assert list(tmp_path.iterdir()) == []  # nothing of it written, or kept


def test_a_content_length_other_than_the_archive_size_is_refused_when_verifying(tmp_path, monkeypatch, server, cifar10):  # noqa: F811
    archive = cifar10[0]
    server.files["/cifar-10-python.tar.gz"] = archive[:-1000]
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, server.url, size=len(archive))

    with pytest.raises(DataError, match=rf"announced as {len(archive) - 1000:,} bytes, but the archive is"):
        prepare_dataset("CIFAR10_x32", tmp_path)
    assert list(tmp_path.iterdir()) == []
    shorter = download.download(server.url + "cifar-10-python.tar.gz", tmp_path / "a", None, size=len(archive))
    assert shorter.stat().st_size == len(archive) - 1000  # unverified (--no_verify), a smaller one is allowed


def test_a_servers_status_text_is_printed_without_terminal_escapes(tmp_path, server):  # noqa: F811
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
