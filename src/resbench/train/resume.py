"""What last.pt holds, and which run folders a run may continue.

`RunState` is everything besides model, optimiser, scaler and RNGs that a resumed run needs to
continue exactly; `training_checkpoint` and `restore_training_state` write and read the whole of
it. The checks here run before any data is loaded, so a folder that holds another run, another
device's run or the user's files is refused at once and left as it is.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resbench.device import distributed
from resbench.runs import checkpoint, schema
from resbench.runs.folder import RunFolder
from resbench.runs.reader import check_same_config
from resbench.runs.schema import RECORD_FIELDS, RunFolderError, invalid_fields
from resbench.settings.config import TrainConfig, has_json_type, shown_value
from resbench.train.lossscale import ConstantLossScale


@dataclass
class RunState:
    """The loop's own state (besides model, optimiser, scaler and RNGs).

    The data order and augmentation need nothing here: batch t is a pure function of (seed, t).
    """

    step: int = 0
    # The kind of device and the precision the run trains in: a resumed run must keep both (see
    # `check_same_device_kind`). Empty in checkpoints written before they were recorded.
    device_type: str = ""
    precision: str = ""
    best_val_acc: float = -1.0
    best_iter: int = 0
    tst_acc: float | None = None  # test figures of the best-validation model
    tst_nll: float | None = None
    val_top5: float | None = None  # top-5 accuracies of the best-validation model (100+ classes)
    tst_top5: float | None = None
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0
    # Loss summed since the last logging point, kept apart from `loss_sum` so that an interruption
    # does not change how the sum is rounded (a resumed run logs the very same trn_loss).
    loss_unlogged: float = 0.0
    skipped_steps: int = 0  # fp16 updates skipped because a gradient was not finite
    step_stats: list[float] = field(default_factory=list)  # `StepStats` sums since the last evaluation
    # Where the clock went (summary.json's "time"). train_seconds is the training steps' time, of which
    # warmup_seconds is each session's first WARMUP_STEPS steps (compilation, CUDA-graph capture, the
    # allocators' first requests); wall_seconds is the loop's, from its first step to its end.
    train_seconds: float = 0.0
    warmup_seconds: float = 0.0
    warmup_steps: int = 0
    eval_seconds: float = 0.0  # evaluations, best.pt included
    checkpoint_seconds: float = 0.0  # last.pt
    setup_seconds: float = 0.0  # before the loop: data loaded onto the device, model and optimiser built
    wall_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluation


def checked_resume_point(run: RunFolder, cfg: TrainConfig, device: torch.device, precision: str) -> dict | None:
    """The last.pt to continue from, checked against these settings and this device; None for a new run.

    A new run starts in an empty folder, or over its own earlier start (same settings) that died
    before the first checkpoint; anything else there (another run, the user's files) is refused.
    """
    wanted = dataclasses.asdict(cfg)
    saved = run.load_last()
    if saved is not None:
        check_same_config(saved["config"], wanted, run.path)
        if problem := run_state_problem(saved["state"], cfg.optim_ni):
            raise RunFolderError(f"{run.file(schema.LAST)} holds a malformed training state ({problem}); "
                                             "delete it to start over, or use another --save folder")
        check_same_device_kind(saved["state"], device, precision, run.file(schema.LAST))
    elif run.leftovers():
        check_fresh_start(run, wanted)
    return saved


# The fields every evaluation record must have: what the summary, the metrics file and the plots read.
HISTORY_FIELDS = {**RECORD_FIELDS, "iter": int, "elapsed_s": (int, float)}


def run_state_problem(state: dict[str, Any], optim_ni: int) -> str | None:
    """What is wrong with the RunState saved in last.pt, or None; checked whole before anything is trained,
    so that a damaged state fails now, with one line, and not at the end of the run."""
    hints = typing.get_type_hints(RunState)
    if unknown := sorted(map(str, set(state) - set(hints))):
        return f"unknown fields {unknown[:5]}"
    for key, value in state.items():
        if not has_json_type(value, hints[key]):
            return f"{key} is {shown_value(value)}"
    step = state.get("step", 0)
    if not 0 <= step <= optim_ni:
        return f"it is at iteration {step}, outside this run's 0 to {optim_ni}"
    if any(state.get(key, 0) < 0 for key in ("loss_count", "skipped_steps", "best_iter", "warmup_steps")):
        return "a negative count"
    iters = []
    for number, record in enumerate(state.get("history", []), 1):
        if not isinstance(record, dict):
            return f"evaluation record {number} is {shown_value(record)}, not an object"
        if bad := invalid_fields(record, HISTORY_FIELDS):
            return f"evaluation record {number} lacks a valid {', '.join(bad)}"
        iters.append(record["iter"])
    if any(later <= earlier for earlier, later in zip([0, *iters], iters)) or (iters and iters[-1] > step):
        return f"its evaluations are at iterations {shown_value(iters)}, not increasing up to iteration {step}"
    if state.get("best_iter", 0) not in (0, *iters):
        return f"its best iteration {state['best_iter']} is not one of its evaluations"
    return None


def check_fresh_start(run: RunFolder, wanted: dict[str, Any]) -> None:
    saved = run.saved_config()
    if saved is None:
        shown = ", ".join(run.leftovers()[:5])
        raise RunFolderError(f"{run.path} is not empty ({shown}) and holds no resbench run; "
                                         "use another --save folder")
    check_same_config(saved, wanted, run.path)


def check_same_device_kind(saved_state: dict[str, Any], device: torch.device, precision: str, path: Path) -> None:
    """Refuse to resume on another kind of device: `--device` may change (cuda:0 to cuda:1), but
    `--mixed_precision true` means fp16 on CUDA and bf16 on CPU, and the augmentation is drawn
    from a generator on the device, which gives other numbers on CUDA than on CPU."""
    was_type = saved_state.get("device_type") or device.type
    was_precision = saved_state.get("precision") or precision
    if (was_type, was_precision) != (device.type, precision):
        raise RunFolderError(
            f"{path} was trained on {was_type} in {was_precision}; resuming on {device.type} would change "
            f"the run ({precision}, other random augmentations). Resume it with --device {was_type}, "
            "or use another --save folder")


def training_checkpoint(cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: ConstantLossScale, state: RunState, world: distributed.World) -> dict[str, Any]:
    """The content of last.pt: enough to continue the run exactly where it is."""
    return {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "state": dataclasses.asdict(state), "rng": checkpoint.rng_states(),
            "rank_buffers": distributed.rank_buffers(model, world)}


def restore_training_state(saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: ConstantLossScale, world: distributed.World, path: Path) -> RunState:
    """Load last.pt into the freshly built objects; a checkpoint of another model is a clear error."""
    try:
        model.load_state_dict(saved["model"])
        distributed.restore_rank_buffers(model, saved.get("rank_buffers", []), world)
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        state = RunState(**saved["state"])  # checked by run_state_problem
        checkpoint.restore_rng_states(saved["rng"])
    except torch.OutOfMemoryError:
        raise  # the device is full, the checkpoint is fine
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise RunFolderError(
            f"{path} does not fit this model and these settings ({detail}); "
            "delete it to start over, or use another --save folder") from None
    return state
