"""Crash-safe files: every write goes to a temporary file, is flushed to disk, then renamed.

A crash at any instant leaves either the previous file or the new one, never half of one.
Checkpoints are read with `weights_only=True`, so a file that would need pickled code is refused.
A write that fails (full disk, no permission) becomes one CheckpointError naming the folder.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ResbenchError


class CheckpointError(ResbenchError):
    """A checkpoint or run folder is unreadable, unwritable, unsafe, or from another configuration."""


@contextlib.contextmanager
def write_errors_named(path: str | Path) -> Iterator[None]:
    """Turn an OSError while writing into `path` into one CheckpointError that says what to do."""
    try:
        yield
    except OSError as exc:
        raise CheckpointError(write_error_message(Path(path), exc)) from None


def write_error_message(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk or use another --save folder; the previous checkpoint is intact"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make that folder writable or use another --save folder"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
        fix = "a file stands where a folder is needed: --save must name a folder"
    else:
        fix = "use another --save folder"
    return f"cannot write {path} ({exc.strerror or exc}); {fix}"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, and rename it into place."""
    path = Path(path)
    with write_errors_named(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide runs from co-workers
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def append_text(path: str | Path, text: str) -> None:
    """Append to a log file; lines are appended, so a crash loses at most the last one."""
    with write_errors_named(path), open(path, "a") as f:
        f.write(text)


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Write `obj` with every tensor on the CPU, so the file loads on any machine, GPU or not.

    Serialised in memory first: torch.save writing into a file turns a full disk into a bare
    RuntimeError, while writing the bytes ourselves keeps the OSError that names the cause.
    """
    buffer = io.BytesIO()
    torch.save(on_cpu(obj), buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def on_cpu(obj: Any) -> Any:
    """A copy of a nest of dicts/lists/tuples with each tensor moved to the CPU (detached)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(value) for value in obj)
    return obj


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with weights_only=True; any fault becomes one clear CheckpointError.

    Callers load onto the CPU and let `load_state_dict` copy onto the device: a GPU fault (out of
    memory, a busy device) then cannot pass for a corrupted file, and no second copy of the
    model stays on the GPU for the whole run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickler_reason(exc)
        if "GLOBAL" in reason.upper():
            raise CheckpointError(
                f"checkpoint {path} was refused: it needs more than tensors and plain values to load "
                f"({reason}); only load checkpoints written by resbench") from None
        raise CheckpointError(f"checkpoint {path} is corrupted or not a checkpoint ({reason}); "
                              "delete it to start over") from None
    except MemoryError:
        raise
    except Exception as exc:  # torch.load fails on damaged bytes in many ways (KeyError, IndexError, struct.error...)
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({type(exc).__name__}); "
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
    see `data.TrainBatches`); saving them keeps anything else drawn from torch's global RNG exact.
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
