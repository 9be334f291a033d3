"""Checkpoints written and loaded safely (runs/checkpoint.py): plain tensors only, digests recorded and checked,
no pickled code run, no zip bomb inflated, a full disk never costing the previous checkpoint."""

import errno
import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from test_run_folder import folder_state

from resbench import files
from resbench.cli.main import main
from resbench.runs import checkpoint
from resbench.runs.folder import RunFolder
from resbench.runs.schema import RunFolderError as CheckpointError
from resbench.train.loop import train


def test_checkpoints_hold_cpu_tensors_in_a_plain_structure():
    weights = torch.ones(2, requires_grad=True)
    moved = checkpoint.on_cpu({"model": {"w": weights}, "rng": [torch.zeros(1)], "step": 3, "pair": (weights, "a")})
    assert moved["step"] == 3 and isinstance(moved["pair"], tuple) and moved["pair"][1] == "a"
    assert moved["model"]["w"].device.type == "cpu" and not moved["model"]["w"].requires_grad


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoints_of_a_gpu_run_load_without_a_gpu(tmp_path):
    checkpoint.save_checkpoint({"w": torch.ones(2, device="cuda")}, tmp_path / "best.pt")
    assert torch.load(tmp_path / "best.pt", weights_only=True)["w"].device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_states_restore_from_a_checkpoint_loaded_onto_the_gpu(tmp_path):
    """A CUDA run loads last.pt with map_location=cuda; generator states must still restore."""
    torch.zeros(1, device="cuda")  # initialise CUDA, so its generator is saved too
    checkpoint.save_checkpoint({"rng": checkpoint.rng_states()}, tmp_path / "last.pt")
    expected = torch.rand(3), torch.rand(3, device="cuda")
    checkpoint.restore_rng_states(checkpoint.load_checkpoint(tmp_path / "last.pt", map_location="cuda")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, device="cuda"), expected[1])


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_needing_pickled_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "payload-ran"
    (tmp_path / "run").mkdir()
    torch.save({"model": Payload(marker)}, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="was refused: it needs more than tensors"):
        RunFolder(tmp_path / "run").load_last()
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b"abc", bytes(range(256)) * 4, b"PK\x03\x04" * 50])
def test_garbage_checkpoint_is_a_clear_error(tmp_path, content):
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupted|refused"):
        checkpoint.load_checkpoint(tmp_path / "last.pt")


def test_truncated_checkpoint_is_a_clear_error(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        train(unfinished_run)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.save_last({"step": torch.tensor(1)})

    def disk_full(fd):  # the bytes went to the page cache; the disk has no room for them
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match=rf"cannot write {tmp_path}/last.pt \(No space left on device\).*"
                                              "previous last.pt is intact"):
        run.save_last({"step": torch.tensor(2)})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(run.file("last.pt")) == {"step": torch.tensor(1)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temporary file left


@pytest.mark.parametrize("previous", [True, False], ids=["over_a_checkpoint", "the_first"])
def test_a_checkpoint_the_disk_has_no_room_for_leaves_its_digest_file_as_it_was(tmp_path, monkeypatch, previous):
    """A 20 MB tmpfs has room for the small .sha256 file but not for the checkpoint: afterwards
    `sha256sum -c last.pt.sha256` must pass on the previous last.pt, and a first one leaves no digest file."""
    run = RunFolder(tmp_path)
    if previous:
        run.save_last({"step": torch.tensor(1)})
    before = folder_state(tmp_path)
    fsync = os.fsync

    def room_for_small_files(fd):
        if os.fstat(fd).st_size > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", room_for_small_files)
    with pytest.raises(CheckpointError, match="No space left on device"):
        run.save_last({"step": torch.tensor(2), "weights": torch.zeros(1000)})
    assert folder_state(tmp_path) == before


def test_run_files_follow_the_umask(tmp_path):
    checkpoint.save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~files.current_umask()


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_flipped_byte_in_a_checkpoint_is_named(unfinished_run, capsys, name):
    path = Path(unfinished_run.save) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    if name == "last.pt":
        code = main(["train", "--resume", unfinished_run.save])
    else:
        code = main(["eval", "--ckpt", str(path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: checkpoint {path} is corrupted or truncated: its SHA-256 is not the one "
                                 f"recorded in {name}.sha256 when it was written; restore it, or delete it to start over\n")


def test_checkpoint_digests_survive_a_crash_between_the_writes(tmp_path, monkeypatch):
    """Killed after the new digest is recorded but before the rename: the old checkpoint still loads."""
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"step": torch.tensor(1)}, path)

    def killed(*args):
        raise KeyboardInterrupt

    real_replace = checkpoint.replace_atomically
    monkeypatch.setattr(checkpoint, "replace_atomically",
                        lambda target, write: killed() if target == path else real_replace(target, write))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert len(checkpoint.recorded_digests(path)) == 2
    assert checkpoint.load_checkpoint(path) == {"step": torch.tensor(1)}
    checkpoint.save_checkpoint({"step": torch.tensor(3)}, path)
    assert len(checkpoint.recorded_digests(path)) == 1 and checkpoint.load_checkpoint(path) == {"step": torch.tensor(3)}


def test_a_zip_bomb_checkpoint_is_refused_unpacked(tmp_path):
    """A deflated 200 MiB record in a 200 KB file: torch would inflate it into memory."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    bomb = tmp_path / "last.pt"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as original, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in original.infolist():
            out.writestr(entry.filename, original.read(entry))
        with out.open("archive/data/1", "w") as member:
            for _ in range(200):
                member.write(bytes(2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"was refused: it holds compressed entries \(209,715,\d+ bytes unpacked\)"):
        checkpoint.load_checkpoint(bomb)


def test_full_disk_before_the_first_checkpoint_does_not_claim_one_is_intact(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(CheckpointError) as excinfo:
        RunFolder(tmp_path).save_last({"step": torch.tensor(1)})
    assert str(excinfo.value) == (f"cannot write {tmp_path}/last.pt (No space left on device); free space on that "
                                  "disk or use another --save folder")
