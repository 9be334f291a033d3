"""The files of a run folder, each written so that a crash never leaves half of one.

    log.txt        human-readable: environment, every setting, parameter count, one line per evaluation
    config.json    the settings, as `resbench train --resume` reads them back
    metrics.jsonl  one JSON record per evaluation
    last.pt        full training state at the last evaluation (or signal), for resuming exactly
    best.pt        plain state_dict of the best-validation model
    summary.json   the results of the finished run; its presence means "done"
    .lock          held (flock) by the process training into the folder, so a second one is refused
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, checkpoint

# What last.pt must hold; a multi-process run adds "rank_buffers" (each rank's BatchNorm statistics).
LAST_KEYS = {"config", "model", "optimizer", "scaler", "state", "rng"}
LOCK_NAME = ".lock"
NOT_RUN_STATE = {LOCK_NAME, "stdout.log"}  # the lock, and the output `resbench sweep` captures there


def writer_only(method: Callable[..., None]) -> Callable[..., None]:
    """Make a write method a no-op on processes that do not own the run folder."""

    @functools.wraps(method)
    def write(self: RunFolder, *args: Any, **kwargs: Any) -> None:
        if self.writer:
            method(self, *args, **kwargs)

    return write


class RunFolder:
    """The run's files. Only one process writes them: in a data-parallel run the others pass
    `writer=False` and every write below becomes a no-op for them."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.tensorboard: Any = None  # a SummaryWriter once open_tensorboard() is called

    def file(self, name: str) -> Path:
        return self.path / name

    def is_done(self) -> bool:
        return self.file("summary.json").is_file()

    def summary(self) -> dict[str, Any]:
        return self.read_json("summary.json", "delete it to resume the run from last.pt")

    def saved_config(self) -> dict[str, Any] | None:
        """The settings in config.json, or None when there is none."""
        if not self.file("config.json").exists():
            return None
        return self.read_json("config.json", "use another --save folder")

    def read_json(self, name: str, fix: str) -> dict[str, Any]:
        try:
            value = json.loads(self.file(name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise checkpoint.CheckpointError(f"{self.file(name)} is unreadable ({exc}); {fix}") from None
        if not isinstance(value, dict):
            raise checkpoint.CheckpointError(f"{self.file(name)} is not a resbench {name}; {fix}")
        return value

    def leftovers(self) -> list[str]:
        """What the folder holds besides the lock, a sweep's stdout.log and interrupted writes' temporary files."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in NOT_RUN_STATE and not p.name.endswith(".tmp"))

    def load_last(self) -> dict[str, Any] | None:
        """The saved training state, or None for a new run."""
        last = self.file("last.pt")
        if not last.exists():
            return None
        if not last.is_file():
            raise checkpoint.CheckpointError(f"{last} is not a file; remove it, or use another --save folder")
        saved = checkpoint.load_checkpoint(last)
        missing = LAST_KEYS - set(saved) if isinstance(saved, dict) else LAST_KEYS
        if missing or not all(isinstance(saved[key], dict) for key in ("config", "model", "state")):
            raise checkpoint.CheckpointError(
                f"{last} is not a resbench training checkpoint (it lacks {sorted(missing) or 'the right contents'}); "
                "delete it to start over, or use another --save folder")
        return saved

    @contextlib.contextmanager
    def claimed(self, agree: Callable[[bool], bool] = bool) -> Iterator[RunFolder]:
        """Hold the folder for this process's run: created if needed, checked writable, and locked,
        so a second process training into it (a sweep started twice) is refused instead of
        interleaving its files. `agree(failed)` tells every rank of a data-parallel run whether
        the writer could claim it, so all of them stop with an error rather than the others
        waiting in a collective. If the run fails, what this call created (folders, the lock
        file) is removed again unless the run wrote something there."""
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        lock_existed = self.file(LOCK_NAME).exists()
        lock, error = None, None
        if self.writer:
            try:
                lock = self.lock()
            except checkpoint.CheckpointError as exc:
                error = exc
        if agree(error is not None):
            if lock is not None:
                lock.close()
            raise error or checkpoint.CheckpointError(
                f"the main process could not claim the run folder {self.path}; see its error")
        try:
            yield self
        except BaseException:
            if self.writer and not lock_existed:
                self.file(LOCK_NAME).unlink(missing_ok=True)
            for folder in created if self.writer and not self.leftovers() else []:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        finally:
            if lock is not None:
                lock.close()  # releases the lock

    def lock(self) -> Any:
        """Create the folder, try a write, and take its lock; the open lock file holds the lock."""
        with checkpoint.write_errors_named(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.path).close()
            lock = open(self.file(LOCK_NAME), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise checkpoint.CheckpointError(f"another resbench process is training in {self.path}; wait for it "
                                             "to end, or use another --save folder") from None
        return lock

    @writer_only
    def start(self, cfg: Any, params: int, device: torch.device, precision: str) -> None:
        """A new run's first files (train() has already claimed the folder and checked what it holds)."""
        checkpoint.write_json(self.file("config.json"), vars(cfg))
        checkpoint.write_text(self.file("metrics.jsonl"), "")
        lines = ["# resbench run", f"# started with: {' '.join(sys.argv)}"]
        lines += [f"# {key}: {value}" for key, value in self.environment(device).items()]
        lines += [f"# precision: {precision}", f"# params: {params:,}"]
        lines += [f"--{key} {value}" for key, value in vars(cfg).items()]
        checkpoint.write_text(self.file("log.txt"), "\n".join(lines) + "\n")

    @writer_only
    def log(self, line: str) -> None:
        """Print a line (above any progress bar) and append it to log.txt."""
        tqdm.write(line)
        checkpoint.append_text(self.file("log.txt"), line + "\n")

    @writer_only
    def append_metrics(self, record: dict[str, Any]) -> None:
        checkpoint.append_text(self.file("metrics.jsonl"), json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["iter"])
            self.tensorboard.flush()

    @writer_only
    def open_tensorboard(self, step: int) -> None:
        """TensorBoard event files in <run>/tensorboard; events past `step` (a crash's leftovers) are purged."""
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(self.file("tensorboard")), purge_step=step or None)

    @writer_only
    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """On resume: metrics.jsonl becomes exactly the records up to the checkpoint."""
        checkpoint.write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))

    @writer_only
    def save_last(self, state: dict[str, Any]) -> None:
        checkpoint.save_checkpoint(state, self.file("last.pt"))

    @writer_only
    def save_best(self, state_dict: dict[str, torch.Tensor]) -> None:
        checkpoint.save_checkpoint(state_dict, self.file("best.pt"))

    @writer_only
    def finish(self, summary: dict[str, Any]) -> None:
        checkpoint.write_json(self.file("summary.json"), summary)
        figure = lambda value: "none" if value is None else f"{value:.4f}"  # noqa: E731  (no evaluation yet)
        self.log(f"{summary['status']}: best val/acc {figure(summary['val_acc'])} at iteration {summary['best_iter']}, "
                 f"tst/acc {figure(summary['tst_acc'])}, tst/nll {figure(summary['tst_nll'])}; summary in "
                 f"{self.file('summary.json')}")

    @staticmethod
    def format_record(r: dict[str, Any]) -> str:
        line = (f"[iter {r['iter']:>6}] trn/loss {r['trn_loss']:.4f}, trn/lr {r['trn_lr']:.4f}, "
                f"trn/w_norm {r['w_norm']:.3f}, trn/g_norm {r['g_norm']:.3f}, "
                f"val/acc {r['val_acc']:.4f}, val/nll {r['val_nll']:.4f}, best/val/acc {r['best_val_acc']:.4f}")
        if "tst_acc" in r:
            line += f", tst/acc {r['tst_acc']:.4f}, tst/nll {r['tst_nll']:.4f}"
        if "loss_scale" in r:
            line += f", loss scale {r['loss_scale']:,.0f}"
        if r.get("skipped_steps"):
            line += f", skipped steps (fp16 overflow) {r['skipped_steps']}"
        return line

    @staticmethod
    def device_name(device: torch.device) -> str:
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    @staticmethod
    def versions() -> dict[str, str]:
        return {"resbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "cuda": torch.version.cuda or "none"}

    def environment(self, device: torch.device) -> dict[str, str]:
        return {"host": platform.node(), "platform": platform.platform(), "device": self.device_name(device),
                **self.versions()}
