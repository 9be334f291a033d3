"""What an archive may hold (data/fetch/archive.py, the recipes' readers): members outside the target folder,
links, damaged or mismatched bytes, decompression bombs and pickles that run code or ask for more memory than
they hold are refused in one line."""

from __future__ import annotations

import gc
import io
import os
import pickle
import tarfile
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
from archives import (
    _all_files,
    _place,
    _tar_gz,
    _use_archive,
    cifar10,  # noqa: F401 (fixture)
    closed_url,  # noqa: F401 (fixture)
    mini_num_train,  # noqa: F401 (autouse fixture)
)

from resbench.data.fetch.archive import Archive, safe_extract
from resbench.data.fetch.prepare import (
    prepare_dataset,
)
from resbench.data.recipes import cifar
from resbench.errors import DataError


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


def test_safe_extract_writes_only_requested_members(tmp_path, cifar10):  # noqa: F811
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(cifar10[0])

    written = safe_extract(archive, tmp_path / "dest", ["cifar-10-batches-py/test_batch"])

    assert written == [(tmp_path / "dest" / "cifar-10-batches-py" / "test_batch").resolve()]
    assert _all_files(tmp_path / "dest") == ["cifar-10-batches-py/test_batch"]


def test_prepare_refuses_archive_with_dotdot_member(tmp_path, monkeypatch, closed_url):  # noqa: F811
    archive = _tar_gz({"cifar-10-batches-py/test_batch": b"x", "../escaped": b"x"})
    _place(tmp_path / "data", "cifar-10-python.tar.gz", archive)
    _use_archive(monkeypatch, "cifar-10-python.tar.gz", archive, closed_url)

    with pytest.raises(DataError, match="refusing unsafe archive .*'../escaped'"):
        prepare_dataset("CIFAR10_x32", tmp_path / "data")

    assert not (tmp_path / "escaped").exists() and not (tmp_path / "data" / "CIFAR10_x32").exists()


def test_damaged_archive_without_verification_is_reported(tmp_path, monkeypatch, cifar10, closed_url, capfd):  # noqa: F811
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


def test_malicious_pickle_is_refused(tmp_path, monkeypatch, closed_url):  # noqa: F811
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


def shared_lists(depth: int) -> list:
    """Nested lists of 2^(depth+1) ints, each list held twice by its parent: a pickle of about 10 bytes a level."""
    nested: list = [1, 1]
    for _ in range(depth):
        nested = [nested, nested]
    return nested


def _pickle_asking_for(kind: str) -> bytes:
    """A CIFAR batch pickle whose allowed constructors (or opcodes) ask for 10^13 bytes."""
    huge = 10**13
    if kind == "opcode":  # BINBYTES8 announcing 10^13 bytes
        return b"\x80\x04\x8e" + huge.to_bytes(8, "little") + b"x" * 16 + b"."
    if kind == "shared lists":  # calls no constructor: 200 bytes of nested lists, each held twice by the memo
        return pickle.dumps({b"data": shared_lists(20), b"labels": [0]}, protocol=3)

    class Call:
        def __reduce__(self):
            if kind == "bytes":
                return bytes, (huge,)
            if kind == "ndarray":
                return np.ndarray, ((huge,), "u1")
            return cifar._NUMPY_RECONSTRUCT, (np.ndarray, (huge,), b"b")

    return pickle.dumps({b"data": Call(), b"labels": [0]}, protocol=3)


@pytest.mark.parametrize("kind", ["bytes", "ndarray", "reconstruct", "opcode", "shared lists"])
def test_a_cifar_pickle_cannot_allocate_more_than_it_holds(tmp_path, kind):
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(_pickle_asking_for(kind))
    with pytest.raises(DataError, match=r"cannot read CIFAR batch data_batch_1 \(.*(10,000,000,000,000 bytes|"
                                              r"truncated|MemoryError|a list of other things than integers)"):
        cifar.load_batch(batch, b"labels")
