"""Writing a run folder (the files and fields are spelled in `runs.schema`), each file so that a
crash never leaves half of one, and the folder's lock.

One naming scheme for the figures: metrics.jsonl's `trn_loss` is `trn/loss` in log.txt (the
reference's spelling) and `train/loss` in TensorBoard (grouped train/, val/, test/).
"""

from __future__ import annotations

import contextlib
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

from resbench import files
from resbench.console import count, printable, printable_lines, shown
from resbench.runs import checkpoint, schema, writes
from resbench.runs.reader import read_object
from resbench.runs.schema import LAST_KEYS, RESOLVED_KEY, RunFolderError, asked_settings
from resbench.settings.config import flag_value
from resbench.version import __version__

# metrics.jsonl names a figure <split>_<name>; log.txt writes <split>/<name>, TensorBoard <group>/<name>.
TENSORBOARD_GROUPS = {"trn": "train", "val": "val", "tst": "test"}
# Fields whose names do not start with their split (best_val_acc is also the reference's name).
SPLIT_OF_FIELD = {"best_val_acc": ("val", "best_acc"), "skipped_steps": ("trn", "skipped_steps"),
                  "loss_scale": ("trn", "loss_scale"), "epoch": ("trn", "epoch"),
                  **{field: ("time", field) for field in schema.TIME_FIELDS}}
# The figures of an evaluation's log line and their formats, in the reference's order; present ones only.
# The learning rate is the last step's (trn_lr, the mean over the steps since the previous evaluation,
# stays in metrics.jsonl: on the warm-up and the cosine it lags the schedule).
LOG_FIELDS = (("trn_loss", ".4f"), ("trn_lr_at_eval", ".4f"), ("trn_w_norm", ".3f"), ("trn_g_norm", ".3f"),
              ("val_acc", ".4f"), ("val_nll", ".4f"), ("val_top5", ".4f"), ("best_val_acc", ".4f"),
              ("tst_acc", ".4f"), ("tst_nll", ".4f"), ("tst_top5", ".4f"), ("loss_scale", ",.0f"))
BEST_TEST_FIELDS = ("tst_acc", "tst_nll", "tst_top5")  # of the best-validation checkpoint, on every line


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

    def __init__(self, path: str | Path, writer: bool = True, named: str | Path | None = None):
        self.path = Path(path)
        self.named = self.path if named is None else Path(named)  # the folder the user named: `path` or above it
        self.writer = writer
        self.tensorboard: Any = None  # a SummaryWriter once open_tensorboard() is called
        self.output_lost = False  # stdout's reader went away: the loop saves and stops

    def file(self, name: str) -> Path:
        return self.path / name

    def is_done(self) -> bool:
        return self.file(schema.SUMMARY).is_file()

    def summary(self) -> dict[str, Any]:
        path = self.file(schema.SUMMARY)
        return read_object(path, {}, str(path), "delete it to resume the run from last.pt")

    def saved_config(self) -> dict[str, Any] | None:
        """The settings in config.json as they were asked, or None when there is none."""
        path = self.file(schema.CONFIG)
        if not path.exists():
            return None
        return asked_settings(read_object(path, {}, str(path), "use another --save folder"))

    def leftovers(self) -> list[str]:
        """What the folder holds besides the lock, a sweep's stdout.log and interrupted writes' temporary files."""
        if not os.path.isdir(self.path):  # os.path: False, not OSError, for a name too long
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in schema.NOT_RUN_STATE and not p.name.endswith(".tmp"))

    def load_last(self) -> dict[str, Any] | None:
        """The saved training state, or None for a new run."""
        last = self.file(schema.LAST)
        if not last.exists():
            return None
        if not last.is_file():
            raise RunFolderError(f"{last} is not a file; remove it, or use another --save folder")
        saved = checkpoint.load_checkpoint(last)
        missing = LAST_KEYS - set(saved) if isinstance(saved, dict) else LAST_KEYS
        if missing or not all(isinstance(saved[key], dict) for key in ("config", "model", "state")):
            raise RunFolderError(
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
            except RunFolderError as exc:
                error = exc
        if agree(error is not None):
            self.release(lock)
            raise error or RunFolderError(
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
        """Remove the lock file, then release the lock (`files.drop_lock_file`)."""
        if lock is not None:
            files.drop_lock_file(self.file(schema.LOCK), lock.fileno())
            lock.close()

    def lock(self) -> Any:
        """Create the folder, try a write, and take its lock; the open lock file holds the lock.

        Holding it, the temporary files of a killed earlier run are removed (no live process can be
        writing them: every writer holds this lock)."""
        with writes.write_errors_named(self.path):
            files.own_folder(self.named, self.path.relative_to(self.named))
            tempfile.TemporaryFile(dir=self.path).close()
            try:
                lock = os.fdopen(files.take_lock(self.file(schema.LOCK)), "rb", buffering=0)
            except BlockingIOError:
                raise RunFolderError(f"another resbench process is training in {self.path}; wait for "
                                     "it to end, or use another --save folder") from None
        files.remove_stale_temporaries(self.path, schema.ATOMIC_FILES)
        return lock

    @writer_only
    def start(self, cfg: Any, params: int, device: torch.device, precision: str, resolved: dict[str, Any]) -> None:
        """A new run's first files (train() has already claimed the folder and checked what it holds).

        config.json keeps the settings as asked and, under "resolved", what they became here;
        log.txt lists the resolved values (with the asked one where it differs), so a setting
        copied from it means on this machine what the run did.
        """
        writes.write_json(self.file(schema.CONFIG), {**vars(cfg), RESOLVED_KEY: resolved})
        writes.write_text(self.file(schema.METRICS), "")
        lines = ["# resbench run", f"# started with: {' '.join(sys.argv)}"]
        lines += [f"# {key}: {value}" for key, value in self.environment(device).items()]
        lines += [f"# precision: {precision}", f"# params: {params:,}"]
        lines += [setting_line(key, value, resolved) for key, value in vars(cfg).items()]
        writes.write_text(self.file(schema.LOG), "\n".join(lines) + "\n")

    @writer_only
    def log(self, line: str) -> None:
        """Append a line to log.txt and print it (above any progress bar), at once: `| tee` shows it."""
        writes.append_text(self.file(schema.LOG), line + "\n")
        if not shown(lambda: (tqdm.write(printable_lines(line), file=sys.stdout), sys.stdout.flush()), sys.stdout):
            self.output_lost = True

    @writer_only
    def append_metrics(self, record: dict[str, Any]) -> None:
        writes.append_text(self.file(schema.METRICS), json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(tensorboard_tag(key), value, record["iter"])
            self.tensorboard.flush()

    @writer_only
    def open_tensorboard(self, step: int) -> None:
        """TensorBoard event files in <run>/tensorboard; events past `step` (a crash's leftovers) are purged."""
        with writes.write_errors_named(self.file(schema.TENSORBOARD)):
            folder = files.own_folder(self.path, schema.TENSORBOARD)  # never through a link planted there
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(folder), purge_step=step or None)

    @writer_only
    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """On resume: metrics.jsonl becomes exactly the records up to the checkpoint."""
        writes.write_text(self.file(schema.METRICS), "".join(json.dumps(r) + "\n" for r in history))

    @writer_only
    def save_last(self, state: dict[str, Any]) -> None:
        checkpoint.save_checkpoint(state, self.file(schema.LAST))

    @writer_only
    def save_best(self, state_dict: dict[str, torch.Tensor]) -> None:
        checkpoint.save_checkpoint(state_dict, self.file(schema.BEST))

    @writer_only
    def finish(self, summary: dict[str, Any]) -> None:
        writes.write_json(self.file(schema.SUMMARY), summary)
        figure = lambda value: "none" if value is None else f"{value:.4f}"  # noqa: E731  (no evaluation yet)
        self.log(f"{summary['status']}: best val/acc {figure(summary['best_val_acc'])} at iteration "
                 f"{summary['best_iter']}, "
                 f"tst/acc {figure(summary['tst_acc'])}, tst/nll {figure(summary['tst_nll'])}; summary in "
                 f"{printable(self.file(schema.SUMMARY))}")

    @staticmethod
    def format_record(r: dict[str, Any], best: dict[str, Any]) -> str:
        """An evaluation's log line: its figures named as in metrics.jsonl, with / for the first _.

        The test figures are the best-validation checkpoint's (`best`: its BEST_TEST_FIELDS and
        `iter`), on every line and labelled so: a line where validation did not improve keeps the
        columns of one where it did, and a reader never takes them for this evaluation's."""
        shown = {**r, **{key: best.get(key) for key in BEST_TEST_FIELDS}}
        present = [(key, spec) for key, spec in LOG_FIELDS if shown.get(key) is not None]
        last_test = next((key for key, _ in reversed(present) if key in BEST_TEST_FIELDS), None)
        figures = [f"{log_label(key)} {shown[key]:{spec}}" + (f" (best.pt, iteration {best['iter']})"
                                                              if key == last_test else "") for key, spec in present]
        line = f"[iter {r['iter']:>6}] " + ", ".join(figures)
        if r.get("skipped_steps"):
            line += f", {log_label('skipped_steps')} {r['skipped_steps']} (fp16 overflow)"
        return line

    @staticmethod
    def device_name(device: torch.device) -> str:
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return f"cpu ({platform.processor() or platform.machine()}, {count(torch.get_num_threads(), 'thread')})"

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
    line = f"--{key} {flag_value(value)}"
    if flag_value(value) == flag_value(asked):
        return line
    return f"{line}  # asked: {'the default' if asked is None else flag_value(asked)}"
