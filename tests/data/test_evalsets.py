"""Evaluation sets (issue 15): CIFAR-10-C/100-C, Tiny-ImageNet-C and SVHN through the shared
download/archive/fetch code, from archives in the official formats built here and served on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import io
import sys
import tarfile

import numpy as np
import pytest
import torch
from archives import _jpeg, _place, _tar_gz, _use_archive, closed_url, server, tiny  # noqa: F401 (fixtures)
from PIL import Image

from resbench.data import evalsets
from resbench.data.fetch.archive import Archive
from resbench.data.fetch.prepare import dataset_status, is_complete, prepare_dataset
from resbench.data.recipes import cifar_c, tiny_c
from resbench.errors import DataError

TWO = ("gaussian_noise", "fog")
PER_SEVERITY = 3


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def plain_tar(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar, as the Zenodo archives are."""
    return _tar_gz(members, mode="w")


def cifar_c_archive(corruptions, folder="CIFAR-10-C", classes=10, seed=0):
    """(tar bytes, labels of one severity, {corruption: images}) of a mini corruption archive."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, PER_SEVERITY)
    images = {c: rng.integers(0, 256, (5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8) for c in corruptions}
    members = {f"{folder}/labels.npy": npy_bytes(np.tile(labels, 5).astype(np.uint8))}  # uint8, as in the archive
    members.update({f"{folder}/{c}.npy": npy_bytes(x) for c, x in images.items()})
    return plain_tar(members), labels, images


@pytest.fixture
def two_corruptions(monkeypatch):
    """The mini archives hold 2 corruptions instead of 19: expect those (in this process only)."""
    monkeypatch.setattr(cifar_c, "CORRUPTIONS", TWO)
    monkeypatch.setattr(tiny_c, "CORRUPTIONS", TWO)
    for name in ("CIFAR10_C", "CIFAR100_C", "TinyImageNet200_C"):
        monkeypatch.setitem(evalsets.EVAL_SETS, name,
                            dataclasses.replace(evalsets.EVAL_SETS[name], corruptions=TWO, benchmark=TWO))


def test_cifar10_c_round_trip_over_http(tmp_path, monkeypatch, server, two_corruptions):  # noqa: F811
    archive, labels, images = cifar_c_archive(TWO)
    server.files["/CIFAR-10-C.tar"] = archive
    _use_archive(monkeypatch, "CIFAR-10-C.tar", archive, server.url)

    folder = prepare_dataset("CIFAR10_C", tmp_path)

    assert sorted(p.name for p in folder.iterdir()) == ["fog.npy", "gaussian_noise.npy", "labels.npy"]
    prepared_labels = np.load(folder / "labels.npy")
    assert prepared_labels.dtype == np.int64 and np.array_equal(prepared_labels, np.tile(labels, 5))
    for c in TWO:
        np.testing.assert_array_equal(np.load(folder / f"{c}.npy"), images[c])
    assert is_complete(tmp_path, "CIFAR10_C")
    status = {row["name"]: row for row in dataset_status(tmp_path)}["CIFAR10_C"]
    assert status["complete"] and status["test"] == 2 * 5 * PER_SEVERITY and status["train"] is None
    labels_read, files = evalsets.corrupted_set("CIFAR10_C", tmp_path)
    assert [c for c, _ in files] == list(TWO) and np.array_equal(labels_read, np.tile(labels, 5))
    (folder / "fog.npy").unlink()
    assert "lacks fog.npy" in {r["name"]: r for r in dataset_status(tmp_path)}["CIFAR10_C"]["problem"]


@pytest.mark.parametrize("name, filename, damage", [
    ("CIFAR10_C", "CIFAR-10-C.tar", "damaged"), ("TinyImageNet200_C", "Tiny-ImageNet-C.tar", "damaged"),
    ("SVHN", "test_32x32.mat", "cannot read test_32x32.mat as a MATLAB v5 file"),
])
def test_truncated_archive_is_refused(tmp_path, monkeypatch, closed_url, tiny, two_corruptions,  # noqa: F811
                                      name, filename, damage):
    if name == "SVHN":
        archive = svhn_mat(tmp_path / "made.mat", np.zeros((5, 32, 32, 3), np.uint8), np.arange(1, 6))
    else:
        archive = cifar_c_archive(TWO)[0] if name == "CIFAR10_C" else tiny_c_archive(["n03", "n01", "n02"])[0]
        _place(tmp_path, "tiny-imagenet-200.zip", tiny[0])
        _use_archive(monkeypatch, "tiny-imagenet-200.zip", tiny[0], closed_url)
    placed = _place(tmp_path, filename, archive[: len(archive) // 2])
    _use_archive(monkeypatch, filename, archive, closed_url)

    with pytest.raises(DataError, match=f"checksum mismatch for {filename}"):
        prepare_dataset(name, tmp_path)
    with pytest.raises(DataError, match=damage):
        prepare_dataset(name, tmp_path, verify=False)

    assert placed.exists() and not (tmp_path / name).exists()


@pytest.mark.parametrize("fault, message", [
    ("short", r"declares uint8 \(15, 32, 32, 3\) \(46080 bytes\) but holds 46079 bytes"),
    ("huge", r"declares uint8 \(1000000000000, 32, 32, 3\) .* but holds 3072 bytes"),
    ("pickled", "not a plain numeric array"),
    ("mismatched", r"expected uint8 \(15, 32, 32, 3\) like labels.npy"),
    ("missing", "lacks CIFAR-10-C/fog.npy"),
    ("labels", "does not hold the same labels for each of the 5 severities"),
])
def test_damaged_corruption_members_are_one_clear_error(tmp_path, monkeypatch, closed_url, two_corruptions,  # noqa: F811
                                                        fault, message):
    _, labels, images = cifar_c_archive(TWO)
    members = {"CIFAR-10-C/labels.npy": npy_bytes(np.tile(labels, 5)),
               **{f"CIFAR-10-C/{c}.npy": npy_bytes(x) for c, x in images.items()}}
    fog = "CIFAR-10-C/fog.npy"
    if fault == "short":
        members[fog] = members[fog][:-1]
    elif fault == "huge":  # a header declaring 1e12 images over one image's bytes: no allocation of it
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (10**12, 32, 32, 3)})
        members[fog] = header.getvalue() + bytes(3072)
    elif fault == "pickled":
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        members[fog] = buffer.getvalue()
    elif fault == "mismatched":
        members[fog] = npy_bytes(images["fog"][:, :16])
    elif fault == "missing":
        del members[fog]
    else:
        members["CIFAR-10-C/labels.npy"] = npy_bytes(np.arange(5 * PER_SEVERITY) % 10)
    archive = plain_tar(members)
    _place(tmp_path, "CIFAR-10-C.tar", archive)
    _use_archive(monkeypatch, "CIFAR-10-C.tar", archive, closed_url)

    with pytest.raises(DataError, match=message):
        prepare_dataset("CIFAR10_C", tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]  # no dataset, no temporary folder


def tiny_c_archive(wnids, seed=1):
    """(tar bytes, {(corruption, severity): [(file name, wnid)] sorted}) of a mini Tiny-ImageNet-C."""
    rng = np.random.default_rng(seed)
    files = [("val_9.JPEG", wnids[0]), ("val_1.JPEG", wnids[2]), ("val_5.JPEG", wnids[1]), ("val_3.JPEG", wnids[0])]
    members, jpegs = {}, {}
    for c in TWO:
        for s in range(1, 6):
            for filename, wnid in files:
                name = f"Tiny-ImageNet-C/{c}/{s}/{wnid}/{filename}"
                members[name] = jpegs[name] = _jpeg(rng)
    return plain_tar(members), jpegs, sorted(files)


def test_tiny_imagenet_c_numbers_classes_by_wnids_txt(tmp_path, monkeypatch, server, tiny, closed_url,  # noqa: F811
                                                       two_corruptions):
    tiny_zip = tiny[0]
    wnids = ["n03", "n01", "n02"]  # the fixture's wnids.txt order, deliberately not sorted
    archive, jpegs, files = tiny_c_archive(wnids)
    server.files.update({"/Tiny-ImageNet-C.tar": archive, "/tiny-imagenet-200.zip": tiny_zip})
    _use_archive(monkeypatch, "Tiny-ImageNet-C.tar", archive, closed_url)
    _use_archive(monkeypatch, "tiny-imagenet-200.zip", tiny_zip, closed_url)

    folder = prepare_dataset("TinyImageNet200_C", tmp_path, mirror=server.url)

    assert sorted(path for path, _, _ in server.log) == ["/Tiny-ImageNet-C.tar", "/tiny-imagenet-200.zip"]
    labels = np.load(folder / "labels.npy")
    assert labels.tolist() == [wnids.index(wnid) for _, wnid in files] * 5  # by file name, classes by line
    for c in TWO:
        names = [f"Tiny-ImageNet-C/{c}/{s}/{wnid}/{f}" for s in range(1, 6) for f, wnid in files]
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(jpegs[n])).convert("RGB")) for n in names])
        np.testing.assert_array_equal(np.load(folder / f"{c}.npy"), decoded)
    assert is_complete(tmp_path, "TinyImageNet200_C")
    assert (tmp_path / "downloads" / "tiny-imagenet-200.zip").is_file()


def test_tiny_imagenet_c_with_uneven_severities_is_refused(tmp_path, monkeypatch, tiny, closed_url,  # noqa: F811
                                                            two_corruptions):
    archive = tiny_c_archive(["n03", "n01", "n02"])[0]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    del members["Tiny-ImageNet-C/fog/4/n01/val_5.JPEG"]
    archive = plain_tar(members)
    for filename, content in (("Tiny-ImageNet-C.tar", archive), ("tiny-imagenet-200.zip", tiny[0])):
        _place(tmp_path, filename, content)
        _use_archive(monkeypatch, filename, content, closed_url)

    message = "Tiny-ImageNet-C/fog/4/ holds other images than Tiny-ImageNet-C/gaussian_noise/1/"
    with pytest.raises(DataError, match=message):
        prepare_dataset("TinyImageNet200_C", tmp_path)
    assert not (tmp_path / "TinyImageNet200_C").exists()


def svhn_mat(path, images: np.ndarray, labels: np.ndarray) -> bytes:
    from scipy.io import savemat

    savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": labels.reshape(-1, 1).astype(np.uint8)})
    return path.read_bytes()


def test_svhn_test_split_from_the_mat_file(tmp_path, monkeypatch, server):  # noqa: F811
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = np.array([10, 1, 2, 3, 9, 10, 5])  # 10 is the digit 0
    mat = svhn_mat(tmp_path / "made.mat", images, labels)
    server.files["/test_32x32.mat"] = mat
    _use_archive(monkeypatch, "test_32x32.mat", mat, server.url)

    folder = prepare_dataset("SVHN", tmp_path / "data")

    np.testing.assert_array_equal(np.load(folder / "test_images.npy"), images)
    assert np.load(folder / "test_labels.npy").tolist() == [0, 1, 2, 3, 9, 0, 5]
    assert is_complete(tmp_path / "data", "SVHN")
    count, chunks = evalsets.ood_chunks("SVHN", tmp_path / "data", 32, 0)
    assert count == 7 and np.array_equal(np.concatenate(list(chunks)), images)


def test_svhn_without_scipy_or_with_a_bad_file_is_one_clear_error(tmp_path, monkeypatch, closed_url):  # noqa: F811
    _place(tmp_path, "test_32x32.mat", b"MATLAB 5.0 MAT-file, but then nothing")
    _use_archive(monkeypatch, "test_32x32.mat", b"x", closed_url)
    with pytest.raises(DataError, match="cannot read test_32x32.mat as a MATLAB v5 file"):
        prepare_dataset("SVHN", tmp_path, verify=False)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(DataError, match=r"needs scipy: pip install 'resbench\[svhn\]'"):
        prepare_dataset("SVHN", tmp_path, verify=False)
    assert not (tmp_path / "SVHN").exists()


def test_cli_download_and_list_of_a_full_corruption_archive(tmp_path, cli):
    archive = cifar_c_archive(cifar_c.CORRUPTIONS, "CIFAR-100-C", 100)[0]  # all 19 corruptions, 3 images each
    _place(tmp_path, "CIFAR-100-C.tar", archive)

    refused = cli("data", "download", "CIFAR100_C", "--data_root", tmp_path)
    forced = cli("data", "download", "CIFAR100_C", "--data_root", tmp_path, "--no_verify")
    listed = cli("data", "list", "--data_root", tmp_path, check=True)

    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: checksum mismatch for CIFAR-100-C.tar: expected md5 11f0ed0f1191edbf9fa23466ae6021d3")
    assert forced.returncode == 0, forced.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[2:]}
    assert rows["CIFAR100_C"][1:5] == ["complete", "-", "-", str(19 * 5 * PER_SEVERITY)]  # train, val, test
    assert rows["CIFAR10_C"][1] == rows["SVHN"][1] == rows["TinyImageNet200_C"][1] == "missing"


def test_box_downsample_is_pil_box_exactly():
    images = np.random.default_rng(4).integers(0, 256, (50, 64, 64, 3), dtype=np.uint8)
    images[0] = 255  # the extremes, where rounding up could overflow
    images[1, ::2, ::2] = 0
    pil = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BOX)) for x in images])
    np.testing.assert_array_equal(evalsets.box_downsample(torch.from_numpy(images)).numpy(), pil)


def test_reading_tar_members_does_not_search_the_member_list(tmp_path, monkeypatch):
    """tarfile's getmember is a linear scan: reading Tiny-ImageNet-C's 750,000 JPEGs by name would be quadratic."""
    path = tmp_path / "a.tar"
    path.write_bytes(plain_tar({f"d/{i}.bin": bytes([i]) for i in range(20)}))
    monkeypatch.setattr(tarfile.TarFile, "getmember", lambda *a: pytest.fail("linear member lookup"))
    with Archive(path) as ar:
        assert [ar.read(name) for name in ar.files] == [bytes([i]) for i in range(20)]

