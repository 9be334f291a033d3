"""summary.json of a run: its table figures (best validation and its test figures) and its cost."""

from __future__ import annotations

import dataclasses
from typing import Any

from resbench.device import distributed
from resbench.evaluate.metrics import reports_top5
from resbench.train.resume import RunState
from resbench.train.step import Job


def final_summary(job: Job, state: RunState, status: str) -> dict[str, Any]:
    """summary.json: the run's table figures (best validation and its test figures) and its cost."""
    cfg = job.cfg
    spec = job.spec
    spent = time_breakdown(state)
    return {
        "status": status,
        "data_name": cfg.data_name,
        "depth": cfg.resnet_depth,
        "width": cfg.resnet_width,
        "precision": job.precision,
        "params": job.params,
        "best_val_acc": state.best_val_acc if state.best_val_acc >= 0 else None,
        "tst_acc": state.tst_acc,
        "tst_nll": state.tst_nll,
        "val_is_test": spec.val_is_test,  # the test figures are the validation figures (ImageNet, as the reference)
        **({"val_top5": state.val_top5, "tst_top5": state.tst_top5}
           if reports_top5(spec.num_classes) else {}),
        "best_iter": state.best_iter,
        "iterations": state.step,
        "skipped_steps": state.skipped_steps,
        "wall_seconds": state.wall_seconds,
        "images_per_sec": state.step * cfg.batch_size / state.train_seconds if state.train_seconds else None,
        "steady_images_per_sec": steady_images_per_sec(spent, cfg.batch_size),
        "time": spent,
        "epochs_per_min": epochs_per_minute(state.history, cfg.batch_size, spec.num_train),
        "device": job.run.device_name(job.device),
        "world_size": distributed.launched_world().world_size,
        "versions": job.run.versions(),
        "config": dataclasses.asdict(cfg),
        "splits": job.splits.sizes(),  # images per split: a built-in set of other sizes gets no published figures
    }


def time_breakdown(state: RunState) -> dict[str, float | int]:
    """Where the run's time went, in seconds: the loop's wall clock is the sum of everything from
    warmup_s to other_s (progress lines, logs, TensorBoard); setup_s came before it."""
    accounted = state.train_seconds + state.eval_seconds + state.checkpoint_seconds
    return {
        "setup_s": state.setup_seconds,
        "warmup_s": state.warmup_seconds, "warmup_steps": state.warmup_steps,
        "steady_s": state.train_seconds - state.warmup_seconds, "steady_steps": state.step - state.warmup_steps,
        "eval_s": state.eval_seconds, "evaluations": len(state.history),
        "checkpoint_s": state.checkpoint_seconds,
        "other_s": state.wall_seconds - accounted,
    }


def steady_images_per_sec(spent: dict[str, float | int], batch_size: int) -> float | None:
    """The loop's speed once warmed up: what `resbench bench` measures, and what a longer run gets.

    `images_per_sec` beside it divides by all the training steps' time, compilation included."""
    if spent["steady_steps"] > 0 and spent["steady_s"] > 0:
        return spent["steady_steps"] * batch_size / spent["steady_s"]
    return None


def time_report(summary: dict[str, Any]) -> str:
    """The log's account of the run's time: summary.json's `time` in words."""
    spent, rate = summary["time"], summary["steady_images_per_sec"]
    steady = (f"{spent['steady_steps']:,} steady iterations {spent['steady_s']:.1f} s ({rate:,.1f} images/s)"
              if rate is not None else "no steady iterations")
    plural = lambda n, word: f"{n:,} {word}{'' if n == 1 else 's'}"  # noqa: E731
    return (f"time: {summary['wall_seconds']:.1f} s in the loop = {plural(spent['warmup_steps'], 'warm-up iteration')} "
            f"{spent['warmup_s']:.1f} s (compiling, first allocations) + {steady} + "
            f"{plural(spent['evaluations'], 'evaluation')} {spent['eval_s']:.1f} s + checkpoints "
            f"{spent['checkpoint_s']:.1f} s + other {spent['other_s']:.1f} s; setup before it {spent['setup_s']:.1f} s")


def epochs_per_minute(history: list[dict[str, Any]], batch_size: int, num_train: int,
                      window: int = 5000) -> float:
    """Throughput over the last `window` iterations (the whole run if shorter), wall clock."""
    if not history:
        return float("nan")
    last = history[-1]
    start = {"iter": 0, "elapsed_s": 0.0}
    for record in history:
        if record["iter"] <= last["iter"] - window:
            start = record
    minutes = (last["elapsed_s"] - start["elapsed_s"]) / 60
    epochs = (last["iter"] - start["iter"]) * batch_size / num_train
    return epochs / minutes if minutes > 0 else float("nan")
