"""The files of a run folder, each written so that a crash never leaves half of one.

    log.txt        human-readable: environment, every setting (resolved), parameter count, one line per evaluation
    config.json    the settings as asked, which `resbench train --resume` reads back, and beside them
                   ("resolved") what they became: device, compile choice, absolute folders
    metrics.jsonl  one JSON record per evaluation
    last.pt        full training state at the last evaluation (or signal), for resuming exactly
    best.pt        plain state_dict of the best-validation model
    summary.json   the results of the finished run; its presence means "done"
    *.pt.sha256    the SHA-256 of last.pt and best.pt, recorded when written, checked when loaded
    .lock          held (flock) by the process training into the folder, so a second one is refused;
                   removed when that process ends

One naming scheme for the figures: metrics.jsonl's `trn_loss` is `trn/loss` in log.txt (the
reference's spelling) and `train/loss` in TensorBoard (grouped train/, val/, test/).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, checkpoint, files
from .config import RESOLVED_KEY, asked_settings

# What last.pt must hold; a multi-process run adds "rank_buffers" (each rank's BatchNorm statistics).
LAST_KEYS = {"config", "model", "optimizer", "scaler", "state", "rng"}
LOCK_NAME = ".lock"
NOT_RUN_STATE = {LOCK_NAME, "stdout.log"}  # the lock, and the output `resbench sweep` captures there
# The files a run writes atomically (a temporary file renamed into place), whose temporaries a
# killed run leaves behind; the next run to hold the folder's lock removes them.
ATOMIC_FILES = ("config.json", "metrics.jsonl", "log.txt", "last.pt", "best.pt", "summary.json",
                *(name + checkpoint.DIGEST_SUFFIX for name in ("last.pt", "best.pt")))

# metrics.jsonl names a figure <split>_<name>; log.txt writes <split>/<name>, TensorBoard <group>/<name>.
TENSORBOARD_GROUPS = {"trn": "train", "val": "val", "tst": "test"}
# Fields whose names do not start with their split (best_val_acc is also the reference's name).
SPLIT_OF_FIELD = {"best_val_acc": ("val", "best_acc"), "skipped_steps": ("trn", "skipped_steps"),
                  "loss_scale": ("trn", "loss_scale"), "epoch": ("trn", "epoch"), "elapsed_s": ("time", "elapsed_s")}
# The figures of an evaluation's log line and their formats, in the reference's order; present ones only.
LOG_FIELDS = (("trn_loss", ".4f"), ("trn_lr", ".4f"), ("trn_w_norm", ".3f"), ("trn_g_norm", ".3f"),
              ("val_acc", ".4f"), ("val_nll", ".4f"), ("val_top5", ".4f"), ("best_val_acc", ".4f"),
              ("tst_acc", ".4f"), ("tst_nll", ".4f"), ("tst_top5", ".4f"), ("loss_scale", ",.0f"))


def split_and_name(key: str) -> tuple[str, str]:
    """("trn", "loss") for trn_loss: the split a metrics.jsonl field belongs to, and its name within it."""
    if key in SPLIT_OF_FIELD:
        return SPLIT_OF_FIELD[key]
    split, _, name = key.partition("_")
    return (split, name) if split in TENSORBOARD_GROUPS and name else ("run", key)


def log_label(key: str) -> str:
    """The log.txt name of a metrics.jsonl field: trn_loss -> trn/loss."""
    return "/".join(split_and_name(key))


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl field: trn_loss -> train/loss, tst_acc -> test/acc."""
    split, name = split_and_name(key)
    return f"{TENSORBOARD_GROUPS.get(split, split)}/{name}"


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
        """The settings in config.json as they were asked, or None when there is none."""
        if not self.file("config.json").exists():
            return None
        return asked_settings(self.read_json("config.json", "use another --save folder"))

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
        if not os.path.isdir(self.path):  # os.path: False, not OSError, for a name too long
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
        waiting in a collective. The lock file is removed when the run ends; if the run
        fails, the folders this call created are removed too unless the run wrote something there."""
        created = [p for p in (self.path, *self.path.parents) if not os.path.lexists(p)]  # deepest first
        lock, error = None, None
        if self.writer:
            try:
                lock = self.lock()
            except checkpoint.CheckpointError as exc:
                error = exc
        if agree(error is not None):
            self.release(lock)
            raise error or checkpoint.CheckpointError(
                f"the main process could not claim the run folder {self.path}; see its error")
        try:
            yield self
        except BaseException:
            self.release(lock)
            for folder in created if self.writer and not self.leftovers() else []:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        self.release(lock)

    def release(self, lock: Any) -> None:
        """Remove the lock file, then release the lock: a process that opened the file meanwhile
        finds, once it holds the lock, that the name no longer leads to it, and starts over (`lock`)."""
        if lock is None:
            return
        with contextlib.suppress(OSError):
            if os.lstat(self.file(LOCK_NAME)).st_ino == os.fstat(lock.fileno()).st_ino:
                self.file(LOCK_NAME).unlink()
        lock.close()

    def lock(self) -> Any:
        """Create the folder, try a write, and take its lock; the open lock file holds the lock.

        The holder removes the file when it ends (`release`), so a lock taken on a file that has
        meanwhile been removed is no lock: it is dropped and the file opened again. Holding it, the
        temporary files of a killed earlier run are removed (no live process can be writing them:
        every writer holds this lock)."""
        with checkpoint.write_errors_named(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.path).close()
        while True:
            with checkpoint.write_errors_named(self.path):
                lock = os.fdopen(files.open_lock_file(self.file(LOCK_NAME)), "rb", buffering=0)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise checkpoint.CheckpointError(f"another resbench process is training in {self.path}; wait for "
                                                 "it to end, or use another --save folder") from None
            try:
                if os.lstat(self.file(LOCK_NAME)).st_ino == os.fstat(lock.fileno()).st_ino:
                    files.remove_stale_temporaries(self.path, ATOMIC_FILES)
                    return lock
            except FileNotFoundError:
                pass
            lock.close()

    @writer_only
    def start(self, cfg: Any, params: int, device: torch.device, precision: str, resolved: dict[str, Any]) -> None:
        """A new run's first files (train() has already claimed the folder and checked what it holds).

        config.json keeps the settings as asked and, under "resolved", what they became here;
        log.txt lists the resolved values (with the asked one where it differs), so a setting
        copied from it means on this machine what the run did.
        """
        checkpoint.write_json(self.file("config.json"), {**vars(cfg), RESOLVED_KEY: resolved})
        checkpoint.write_text(self.file("metrics.jsonl"), "")
        lines = ["# resbench run", f"# started with: {' '.join(sys.argv)}"]
        lines += [f"# {key}: {value}" for key, value in self.environment(device).items()]
        lines += [f"# precision: {precision}", f"# params: {params:,}"]
        lines += [setting_line(key, value, resolved) for key, value in vars(cfg).items()]
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
                    self.tensorboard.add_scalar(tensorboard_tag(key), value, record["iter"])
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
        self.log(f"{summary['status']}: best val/acc {figure(summary['best_val_acc'])} at iteration "
                 f"{summary['best_iter']}, "
                 f"tst/acc {figure(summary['tst_acc'])}, tst/nll {figure(summary['tst_nll'])}; summary in "
                 f"{self.file('summary.json')}")

    @staticmethod
    def format_record(r: dict[str, Any]) -> str:
        """An evaluation's log line: its figures named as in metrics.jsonl, with / for the first _."""
        figures = [f"{log_label(key)} {r[key]:{spec}}" for key, spec in LOG_FIELDS if r.get(key) is not None]
        line = f"[iter {r['iter']:>6}] " + ", ".join(figures)
        if r.get("skipped_steps"):
            line += f", {log_label('skipped_steps')} {r['skipped_steps']} (fp16 overflow)"
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


def setting_line(key: str, asked: Any, resolved: dict[str, Any]) -> str:
    """`--key value` of log.txt: the resolved value, and the asked one where it differs
    (`--device cpu  # asked: auto`)."""
    value = resolved.get(key, asked)
    line = f"--{key} {flag_spelling(value)}"
    if flag_spelling(value) == flag_spelling(asked):
        return line
    return f"{line}  # asked: {'the default' if asked is None else flag_spelling(asked)}"


def flag_spelling(value: Any) -> str:
    """A value as the train flags take it: booleans true/false, None (no clipping) off."""
    if value is None:
        return "off"
    return str(value).lower() if isinstance(value, bool) else str(value)
