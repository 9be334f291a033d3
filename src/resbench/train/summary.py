"""summary.json of a run: its table figures (best validation and its test figures) and its cost."""

from __future__ import annotations

import dataclasses
from typing import Any

from resbench.data import tensors as data
from resbench.evaluate.metrics import reports_top5
from resbench.runtime import distributed
from resbench.train.resume import RunState
from resbench.train.step import Job


def final_summary(job: Job, state: RunState, status: str) -> dict[str, Any]:
    """summary.json: the run's table figures (best validation and its test figures) and its cost."""
    cfg = job.cfg
    num_train = data.DATASETS[cfg.data_name].num_train
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
        **({"val_top5": state.val_top5, "tst_top5": state.tst_top5}
           if reports_top5(data.DATASETS[cfg.data_name].num_classes) else {}),
        "best_iter": state.best_iter,
        "iterations": state.step,
        "skipped_steps": state.skipped_steps,
        "wall_seconds": state.wall_seconds,
        "images_per_sec": state.step * cfg.batch_size / state.train_seconds if state.train_seconds else None,
        "epochs_per_min": epochs_per_minute(state.history, cfg.batch_size, num_train),
        "device": job.run.device_name(job.device),
        "world_size": distributed.launched_world().world_size,
        "versions": job.run.versions(),
        "config": dataclasses.asdict(cfg),
    }


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
