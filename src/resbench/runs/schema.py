"""The run folder's contract: its file names, the fields every reader relies on, and its one error.

    config.json    the settings as asked (`resbench train --resume` reads them back) and, under
                   "resolved", what they became: device, compile choice, precision, absolute folders
    metrics.jsonl  one JSON record per evaluation
    log.txt        human-readable: environment, every setting (resolved), one line per evaluation
    last.pt        the full training state at the last evaluation (or signal), for resuming exactly
    best.pt        the plain state_dict of the best-validation model
    *.pt.sha256    each checkpoint's SHA-256, recorded when written, checked when loaded
    summary.json   the results of the finished run; its presence means "done"
    eval.json      `resbench eval --write_eval` of best.pt (eval_last.json of last.pt), read by `table --columns`
    stdout.log     what `resbench sweep` captured of the run's output
    launch.json    `sweep --launcher slurm|ray`: that the run was handed to a scheduler, and its job
    .lock          held (flock) by the process training into the folder; removed when it ends

Light (no torch): table, compare, plot and sweep read run folders without loading it. A new field
of summary.json is one entry in SUMMARY_FIELDS here (if readers need it) and one line in the
trainer that writes it.
"""

from __future__ import annotations

from typing import Any

from resbench.errors import ResbenchError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
CHECKPOINTS = {"best": BEST, "last": LAST}
SAVED_EVAL = {"best": "eval.json", "last": "eval_last.json"}  # per checkpoint scored
STDOUT = "stdout.log"
LAUNCH = "launch.json"
LOCK = ".lock"
TENSORBOARD = "tensorboard"
# The files a run writes atomically (a temporary file renamed into place, `runs.checkpoint`), whose
# temporaries a killed run leaves behind; the next run to hold the folder's lock removes them.
DIGEST_SUFFIX = ".sha256"
ATOMIC_FILES = (CONFIG, METRICS, LOG, LAST, BEST, SUMMARY, *(name + DIGEST_SUFFIX for name in (LAST, BEST)))
NOT_RUN_STATE = {LOCK, STDOUT, LAUNCH}  # the lock, and what `resbench sweep` writes there

# config.json's key for what the asked settings became on the machine (device, compile, absolute
# folders); the settings themselves stay as asked, so that --resume compares like with like.
RESOLVED_KEY = "resolved"
# What last.pt must hold; a multi-process run adds "rank_buffers" (each rank's BatchNorm statistics).
LAST_KEYS = {"config", "model", "optimizer", "scaler", "state", "rng"}

# eval.json's figures (`resbench eval --write_eval`), which `table --columns` reads back: per OOD set, each
# score's detection metrics; per corruption, these means.
OOD_SCORES = ("msp", "entropy", "energy")
OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
CORRUPTION_METRICS = ("acc", "nll", "ece")

# The fields readers index, with their JSON types. A run that diverged before its first evaluation
# has null figures; the trainer writes every other field as a value.
NUMBER = (int, float)
FIGURE = (*NUMBER, type(None))
SUMMARY_FIELDS = {"data_name": str, "depth": int, "width": int, "precision": str, "params": NUMBER,
                  "wall_seconds": NUMBER, "config": (dict, type(None)),
                  "best_val_acc": FIGURE, "tst_acc": FIGURE, "tst_nll": FIGURE}
# Fields an older summary.json may lack, but that readers index where it has them (export's card quotes
# the device, the process count and the versions).
OPTIONAL_SUMMARY_FIELDS = {"best_iter": int, "device": str, "world_size": int, "versions": dict}
CONFIG_FIELDS = {"data_name": str}
MODEL_SETTINGS = {"data_name": str, "resnet_depth": int, "resnet_width": int}  # what rebuilds a model
RECORD_FIELDS = {"iter": NUMBER, "val_acc": NUMBER, "trn_loss": NUMBER}
# An evaluation record's clock readings (metrics.jsonl): the loop's wall clock at the evaluation and
# the evaluation's own seconds. The only fields in which a resumed run's records differ from the
# uninterrupted run's.
TIME_FIELDS = ("elapsed_s", "eval_s")

class RunFolderError(ResbenchError):
    """A run folder or one of its files is unreadable, unwritable, unsafe, damaged, or from another
    configuration; the message names the file and what to do.

    `table`, `compare` and `plot` summarise many runs, so they skip a folder that raises it with one
    warning line rather than lose the whole report to one crashed or hand-edited run.
    """


def asked_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings of a config.json, without the resolved values recorded beside them."""
    return {key: value for key, value in saved.items() if key != RESOLVED_KEY}


def invalid_fields(value: dict, fields: dict[str, type | tuple[type, ...]]) -> list[str]:
    """The keys of `fields` that `value` lacks or holds with another type (a JSON bool is no number)."""
    return [key for key, kind in fields.items()
            if not isinstance(value.get(key), kind) or isinstance(value.get(key), bool)]


def checked_fields(value: Any, fields: dict[str, type | tuple[type, ...]], what: str,
                   optional: dict[str, type | tuple[type, ...]] | None = None) -> dict:
    """`value` if it is a JSON object whose `fields` (and the `optional` ones it has) have their types, so
    later code can index it safely."""
    if not isinstance(value, dict):
        raise RunFolderError(f"{what} is not a JSON object")
    present = {key: kind for key, kind in (optional or {}).items() if key in value}
    if bad := invalid_fields(value, {**fields, **present}):
        raise RunFolderError(f"{what} lacks a valid {', '.join(bad)}")
    return value


def renamed_fields(summary: Any) -> Any:
    """A summary.json with today's names: older ones called the best validation accuracy `val_acc`."""
    if isinstance(summary, dict) and "best_val_acc" not in summary and "val_acc" in summary:
        summary = {**summary, "best_val_acc": summary["val_acc"]}
    return summary
