"""Checkpoints: written crash-safe (`runs.writes`) with every tensor on the CPU, read back with
`weights_only=True`, so that a file that would need pickled code is refused.

Each checkpoint's SHA-256 is recorded beside it in `<name>.sha256` when it is written and checked
when it is loaded, so a damaged file is named instead of loading as other numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from resbench.files import read_bounded, replace_atomically
from resbench.runs.schema import DIGEST_SUFFIX, RunFolderError
from resbench.runs.writes import write_errors_named


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Write `obj` with every tensor on the CPU, so the file loads on any machine, GPU or not.

    Serialised in memory first: torch.save writing into a file turns a full disk into a bare
    RuntimeError, while writing the bytes ourselves keeps the OSError that names the cause.
    A crash at any instant leaves a checkpoint whose SHA-256 is one of those its `.sha256` file
    lists: the new digest is added before the rename, and the old one dropped after it. A failure
    at any step is reported as a failure to write `path` itself, and leaves the `.sha256` file as it
    was (`sha256sum -c` passes on the previous checkpoint; no digest file without its checkpoint).
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(on_cpu(obj), buffer)
    digest = hashlib.sha256(buffer.getbuffer()).hexdigest()
    with write_errors_named(path, replaces=True):
        before = recorded_digests(path)
        record_digests(path, [digest, *before])
        try:
            replace_atomically(path, lambda f: f.write(buffer.getbuffer()))
        except OSError:
            restore_digests(path, before)
            raise
        record_digests(path, [digest])


def restore_digests(path: Path, digests: list[str]) -> None:
    """After a failed write of `path`: its `.sha256` file lists `digests` again, or is gone if there were none."""
    with contextlib.suppress(OSError):  # the write's own error is the one to report
        if digests:
            record_digests(path, digests)
        else:
            digest_file(path).unlink(missing_ok=True)


MAX_DIGEST_FILE = 64 * 1024  # bytes of a .sha256 file read: a few digests, never a planted huge file


def digest_file(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def record_digests(path: Path, digests: list[str]) -> None:
    """`<path>.sha256` in sha256sum's format: one `<hex>  <name>` line per digest `path` may have."""
    text = "".join(f"{digest}  {path.name}\n" for digest in dict.fromkeys(digests))
    replace_atomically(digest_file(path), lambda f: f.write(text.encode()))


def recorded_digests(path: Path) -> list[str]:
    """The SHA-256 digests recorded for `path`; empty when none were (a file not written by resbench)."""
    try:
        text = read_bounded(digest_file(path), MAX_DIGEST_FILE).decode("ascii", "replace")  # (a FIFO would block)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise RunFolderError(f"cannot read {digest_file(path)} ({exc.strerror or exc})") from None
    return [digest for digest, *_ in (line.split() for line in text.splitlines() if line.strip())
            if re.fullmatch(r"[0-9a-f]{64}", digest)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_recorded_digest(path: Path) -> None:
    """Refuse a checkpoint whose bytes are not those resbench wrote (a flipped bit, a truncated copy)."""
    accepted = recorded_digests(path)
    if accepted and file_sha256(path) not in accepted:
        raise RunFolderError(
            f"checkpoint {path} is corrupted or truncated: its SHA-256 is not the one recorded in "
            f"{digest_file(path).name} when it was written; restore it, or delete it to start over")


def check_container(path: Path) -> None:
    """Refuse a file torch.save did not write before torch unpacks any of it: torch.save writes an
    uncompressed zip, so compressed entries (a zip bomb) or entries larger than the file are refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise RunFolderError(f"checkpoint {path} is corrupted or not a checkpoint (not the zip file torch.save "
                              "writes); delete it to start over") from None
    unpacked = sum(entry.file_size for entry in entries)
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries) or unpacked > path.stat().st_size:
        raise RunFolderError(f"checkpoint {path} was refused: it holds compressed entries ({unpacked:,} bytes "
                              "unpacked), which torch.save never writes; only load checkpoints written by resbench")


def on_cpu(obj: Any) -> Any:
    """A copy of a nest of dicts/lists/tuples with each tensor moved to the CPU (detached)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(value) for value in obj)
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with weights_only=True; any fault becomes one clear RunFolderError.

    Callers load onto the CPU and let `load_state_dict` copy onto the device: a GPU fault (out of
    memory, a busy device) then cannot pass for a corrupted file, and no second copy of the
    model stays on the GPU for the whole run.
    """
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path} does not exist")
    check_recorded_digest(path)
    check_container(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickler_reason(exc)
        if "GLOBAL" in reason.upper():
            raise RunFolderError(
                f"checkpoint {path} was refused: it needs more than tensors and plain values to load "
                f"({reason}); only load checkpoints written by resbench") from None
        raise RunFolderError(f"checkpoint {path} is corrupted or not a checkpoint ({reason}); "
                              "delete it to start over") from None
    except MemoryError:
        raise
    except Exception as exc:  # torch.load fails on damaged bytes in many ways (KeyError, IndexError, struct.error...)
        raise RunFolderError(f"checkpoint {path} is corrupted or truncated ({type(exc).__name__}); "
                              "delete it to start over") from None


def unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The one informative paragraph of torch's weights-only error (the rest is boilerplate)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        candidates = [text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]]
    else:
        candidates = [p for p in text.split("\n\n") if "GLOBAL" in p.upper()]
    reason = " ".join(candidates[0].split()) if candidates else ""
    return reason[:200] or type(exc).__name__


def rng_states() -> dict[str, Any]:
    """torch's global generators (CPU, and every CUDA device), as tensors a weights-only load accepts.

    The training data and augmentation do not use them (they are a pure function of (seed, step),
    see `data.batches.TrainBatches`); saving them keeps anything else drawn from torch's global RNG exact.
    """
    states: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators back; the states come back as CPU tensors whatever `map_location` the
    checkpoint was loaded with (torch accepts only a CPU ByteTensor as a generator state)."""
    torch.set_rng_state(states["torch_cpu"].cpu())
    cuda = states.get("torch_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda])
