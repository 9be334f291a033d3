"""The training loop: one run of the reference recipe, readable top to bottom in `train_loop()`.

Where each number of a results table comes from:
- val_acc: `evaluation()` on the validation split every `eval_every` iterations and at the last;
  the best one is kept (`RunState.best_val_acc`, summary.json's `best_val_acc`).
- tst_acc, tst_nll: the test split, which `evaluation()` scores at every evaluation; the figures
  of the evaluations where val_acc improves are the test figures of the best-validation
  checkpoint (`best.pt`). The others are recorded apart (`tst_*_at_eval`) and never select anything.
- params: `count_parameters()` of the model built by `models.resnet.resnet()`.
- trn_lr, trn_w_norm, trn_g_norm: means over the steps since the previous evaluation, as the
  reference logs them (`StepStats`), beside trn_loss, the mean loss over the same steps.

One step and what it trains with (model, optimiser, hot path) are in `step.py`; the settings in
`settings/config.py`, their checks in `checks.py`; what last.pt holds and when a folder may be
resumed, in `resume.py`; summary.json's figures in `summary.py`, the clock they come from in
`meter.py`; the run folder's files in `runs/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from resbench.console import count, log, printable
from resbench.data.facts import DatasetSpec
from resbench.data.fetch.prepare import prepare_dataset
from resbench.data.prepared import missing_prepared_files
from resbench.device import bnstats, cpus, distributed, holding, hotpath
from resbench.evaluate.metrics import evaluate, reports_top5
from resbench.runs import schema
from resbench.runs.folder import RunFolder
from resbench.runs.reader import check_same_config
from resbench.settings.config import (
    TrainConfig,
    named_folder_of,
    precision_for,
    resolve_device,
    rounding_changes,
    run_folder_of,
)
from resbench.train.checks import check_official_data, validate_config
from resbench.train.meter import Meter
from resbench.train.progress import Progress
from resbench.train.resume import RunState, checked_resume_point, restore_training_state, training_checkpoint
from resbench.train.step import Job, StepStats, build_job, weight_norm
from resbench.train.summary import final_summary, time_report

# Iterations between logging points, where the loop folds the loss sums and (data-parallel) the ranks
# agree on stopping; each synchronises with the device. Progress lines follow the clock (progress.py).
PROGRESS_EVERY = 50


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the run stops as the reference does."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was checkpointed and the run can resume."""


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run to `optim_ni` iterations (resuming if its folder holds a checkpoint)."""
    spec = validate_config(cfg)  # the dataset's facts, read once here for the checks and the fetch
    check_official_data(cfg, spec)
    busy = cpus.busy_warning(threads=cfg.threads)  # before this run adds to the load
    cpus.use_threads(cfg.threads)
    configure_determinism(cfg.deterministic)
    device = resolve_device(cfg.device)
    world = distributed.init_world(device)
    try:
        device = distributed.local_device(device, world)
        agree = lambda failed: distributed.any_rank(failed, world, device)  # noqa: E731
        with RunFolder(run_folder_of(cfg), writer=world.is_main, named=named_folder_of(cfg)).claimed(agree) as run:
            return train_in_world(cfg, spec, run, device, world, busy)
    finally:
        distributed.shutdown(world)


def train_in_world(cfg: TrainConfig, spec: DatasetSpec, run: RunFolder, device: torch.device,
                   world: distributed.World, busy: str | None = None) -> dict[str, Any]:
    """Set up (or resume) the run in its claimed folder, train it, and write its summary.

    `spec`: the dataset's facts the settings were checked against; from the data on, the run uses those
    read with the arrays (`Splits.spec`, of the same import). `busy`: the warning that the machine was
    busy when the run started, for the log."""
    setup_start = time.perf_counter()
    precision = precision_for(cfg.mixed_precision, device)
    hotpath.warn_if_slow_precision(precision, device)
    if run.is_done():
        return already_finished(run, cfg)
    resume_from = checked_resume_point(run, cfg, device, precision)
    ensure_prepared(cfg, spec, world, device)
    data = holding.hold_data(cfg, device, world, precision)
    job = build_job(cfg, data.splits.spec, data.batches, device, precision, world, run, data.splits)
    state = start_or_resume(job, resume_from)
    state.setup_seconds += time.perf_counter() - setup_start
    run.log(data.statement)
    if busy:
        run.log(busy)
    for change in rounding_changes(resume_from["config"], dataclasses.asdict(cfg)) if resume_from else []:
        run.log(f"note: resuming with {change}: the same recipe to float rounding, not bit for bit the "
                "uninterrupted run")
    del resume_from  # the checkpoint's copy of model and optimiser is not needed any more
    try:
        train_loop(job, state)
    except TrainingDiverged:
        run.finish(final_summary(job, state, "diverged"))
        raise
    finally:
        data.batches.close()  # a streaming loader's prefetch thread
    summary = final_summary(job, state, "finished")
    run.log(time_report(summary))
    run.finish(summary)
    return summary


def train_loop(job: Job, state: RunState) -> None:
    """The recipe, step by step: batch → SGD step → (every eval_every) evaluate → checkpoint.

    The clock is the Meter's: `meter.add` books the warm-up apart, `synchronise` the training time up
    to each point where the loop waits for the device, `evaluate_and_save` the evaluation's own.
    """
    cfg = job.cfg
    meter, step_stats = Meter(state, job.device), StepStats(state, job.device)
    progress = Progress(cfg.optim_ni, state.step, cfg.batch_size, state.wall_seconds, shown=job.world.is_main)
    with StopSignals() as signals, contextlib.closing(progress):
        for step in range(state.step, cfg.optim_ni):
            is_eval = (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.optim_ni
            loss, grad_norm, lr = job.step(step, step_stats, measure_grad_norm=is_eval)
            state.step = step + 1
            meter.add(loss, state, is_eval)
            asked = signals.received is not None or job.run.output_lost or progress.output_lost
            stop = synchronise(job, state, meter, asked, is_eval)
            if progress.due(state.step) and not is_eval:  # the clock says so: one read of the device's loss sum
                progress.show(state.step, meter.loss_mean(state), lr)
            if is_eval:
                evaluate_and_save(job, state, meter, step_stats, progress, grad_norm, lr)
            if stop and state.step < cfg.optim_ni:
                save_last(job, state, meter, step_stats)
                cause = "a signal" if signals.received is not None else "its output closing (a broken pipe)"
                raise Interrupted(f"stopped by {cause} at iteration {state.step}; "
                                  f"the state is saved in {job.run.path}: run the same command again to resume")
        meter.stamp(state)  # the last checkpoint's writing included


def synchronise(job: Job, state: RunState, meter: Meter, asked: bool, is_eval: bool) -> bool:
    """Wait for the device where the loop must: at logging points (every PROGRESS_EVERY steps and
    each evaluation), where the loss sums are folded and checked. A single process may stop at any
    step it is `asked` to (a signal, its output gone); ranks agree on stopping at logging points
    only. Whether to stop now."""
    logging_point = is_eval or state.step % PROGRESS_EVERY == 0
    if not logging_point and (not asked or job.world.distributed):
        return False
    if logging_point:
        meter.fold(state, job.world)
        state.skipped_steps = job.scaler.skipped_updates()
        check_finite(state.loss_sum, "the training loss", state, job.run)
    stop = distributed.any_rank(asked, job.world, job.device)
    meter.lap(state)
    return stop


def evaluate_and_save(job: Job, state: RunState, meter: Meter, step_stats: StepStats, progress: Progress,
                      grad_norm: float | None, lr: float) -> None:
    """One evaluation: its record appended to metrics.jsonl and log.txt, last.pt written; its time is
    booked as evaluation time, not training time."""
    eval_start = time.perf_counter()
    with bnstats.reference_running_variance(job.model, job.bn_values):  # biased, as the reference: best.pt too
        record = evaluation(job, state, grad_norm, lr, step_stats.means())
    record["eval_s"] = time.perf_counter() - eval_start  # evaluation() ends reading its figures
    state.eval_seconds += record["eval_s"]
    step_stats.reset()
    meter.stamp(state)
    record["elapsed_s"] = state.wall_seconds
    state.history.append(record)
    state.loss_sum, state.loss_count = 0.0, 0
    job.run.append_metrics(record)
    save_last(job, state, meter, step_stats)
    best = {"tst_acc": state.tst_acc, "tst_nll": state.tst_nll, "tst_top5": state.tst_top5, "iter": state.best_iter}
    job.run.log(f"{job.run.format_record(record, best)}, evaluation {record['eval_s']:.1f} s, "
                f"{progress.timing(state.step, state.wall_seconds)}")
    meter.restart(state)  # evaluation time is not training time
    progress.restart(state.step)


def evaluation(job: Job, state: RunState, grad_norm: float | None, lr: float,
               interval_means: dict[str, float | None]) -> dict[str, Any]:
    """One evaluation as the reference logs it: validation accuracy and NLL beside the training
    statistics, and, when validation accuracy is a new best, the test figures and best.pt.

    The test split is scored at every evaluation, for the selection modes of `resbench table`
    (last iteration, best test); those figures are kept under their own names and never decide
    which model is kept. Where validation is the test set (ImageNet, as the reference) the split is
    scored once and its figures are both.
    """
    model = job.model
    distributed.average_bn_statistics(model, job.world)
    top5 = reports_top5(job.spec.num_classes)
    val = evaluate(model, job.splits.val_images, job.splits.val_labels, job.autocast, job.world, top5)
    test = val if job.spec.val_is_test else evaluate(model, job.splits.test_images, job.splits.test_labels,
                                                     job.autocast, job.world, top5)
    record = {
        "iter": state.step,
        "epoch": state.step / job.batches.steps_per_epoch,
        "trn_loss": state.loss_sum / max(state.loss_count, 1),
        **interval_means,
        "trn_lr_at_eval": lr,
        "trn_w_norm_at_eval": weight_norm(model),
        "trn_g_norm_at_eval": grad_norm,
        **split_figures("val", val),
        **split_figures("tst", test, suffix="_at_eval"),
        "skipped_steps": state.skipped_steps,
    }
    if job.scaler.enabled:
        record["loss_scale"] = job.scaler.scale
    check_finite(record["trn_w_norm_at_eval"], "the weight norm", state, job.run)
    if val["acc"] > state.best_val_acc:
        state.best_val_acc, state.best_iter, state.val_top5 = val["acc"], state.step, val.get("top5")
        state.tst_acc, state.tst_nll, state.tst_top5 = test["acc"], test["nll"], test.get("top5")
        record.update(split_figures("tst", test))
        job.run.save_best(model.state_dict())
    record["best_val_acc"] = state.best_val_acc
    return record


def split_figures(split: str, figures: dict[str, float], suffix: str = "") -> dict[str, float]:
    """`evaluate()`'s figures as metrics.jsonl names them: {"acc": a} -> {"val_acc": a}."""
    return {f"{split}_{name}{suffix}": value for name, value in figures.items()}


# ---------------------------------------------------------------- setting a run up


def start_or_resume(job: Job, resume_from: dict[str, Any] | None) -> RunState:
    """A new run writes its first files; a resumed one loads last.pt and cuts metrics.jsonl back to it."""
    state = RunState(device_type=job.device.type, precision=job.precision)
    if resume_from is not None:
        state = restore_training_state(resume_from, job.model, job.optimizer, job.scaler, job.world,
                                       job.run.file(schema.LAST))
        state.device_type, state.precision = job.device.type, job.precision
        job.scaler.skipped = state.skipped_steps  # the schedule's lag goes on where it was
        job.run.rewrite_metrics(state.history)
    else:
        job.run.start(job.cfg, job.params, job.device, job.precision, resolved_settings(job))
    if job.cfg.tensorboard:
        job.run.open_tensorboard(state.step)
    threads = f", {count(torch.get_num_threads(), 'thread')}" if job.device.type == "cpu" else ""
    job.run.log(f"{'resuming at' if state.step else 'starting at'} iteration {state.step} of {job.cfg.optim_ni} "
                f"in {printable(job.run.path)}: {job.device} ({job.precision}{threads}), {step_kind(job)}, "
                f"{job.params:,} trainable parameters")
    if job.scaler.enabled:
        job.run.log(f"fp16 loss scale {job.scaler.scale:,.0f}, constant as in the reference; an update whose "
                    "gradients are not finite is skipped and counted, and delays the schedule by one step")
    return state


def resolved_settings(job: Job) -> dict[str, Any]:
    """What the asked settings became on this machine: config.json keeps both, apart."""
    return {"save": str(job.run.path.resolve()), "data_root": str(Path(job.cfg.data_root).resolve()),
            "device": str(job.device), "precision": job.precision, "compile": job.compiled,
            "splits": job.splits.sizes()}


def step_kind(job: Job) -> str:
    """Whether the training step is compiled, and why not where `--compile auto` decided."""
    if job.compiled:
        return "compiled step (torch.compile)"
    if str(job.cfg.compile).lower() != "auto":
        return "eager step (--compile false)"
    least = hotpath.COMPILE_MIN_ITERS.get(job.device.type, hotpath.COMPILE_MIN_ITERS["cuda"])
    return f"eager step (--compile auto compiles runs of {least:,}+ iterations on {job.device.type})"


def already_finished(run: RunFolder, cfg: TrainConfig) -> dict[str, Any]:
    """The summary of a finished run with these settings; it is not trained again."""
    check_same_config(run.saved_config() or {}, dataclasses.asdict(cfg), run.path)
    summary = run.summary()
    log(f"{printable(run.path)} already holds a {printable(summary.get('status'))} run; not retraining it. "
        "Use another --save folder to train again.")
    return summary


def ensure_prepared(cfg: TrainConfig, spec: DatasetSpec, world: distributed.World, device: torch.device) -> None:
    """Fetch and prepare a missing dataset before training, as `resbench data download` would.

    Rank 0 prepares it while the others wait; ranks decide together, so a node that lacks the
    data (no shared file system) waits too and then fails with the usual "not prepared" error.
    """
    missing = (bool(missing_prepared_files(cfg.data_name, cfg.data_root))  # an imported set has no archive:
               and not spec.imported)  # the loader names its fix
    if not distributed.any_rank(missing, world, device):
        return
    if world.is_main and missing:
        log(f"{cfg.data_name} is not prepared in {printable(cfg.data_root)}: fetching and preparing it now")
        prepare_dataset(cfg.data_name, cfg.data_root, cfg.mirror)
    distributed.wait_for_rank0(world)


def configure_determinism(enabled: bool) -> None:
    """Ask for deterministic kernels, so a CUDA run resumes bit for bit (CPU runs already do).

    Must run before CUDA initialises: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts.
    """
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


# ---------------------------------------------------------------- the loop's bookkeeping

def save_last(job: Job, state: RunState, meter: Meter, step_stats: StepStats) -> None:
    """Write last.pt, the whole training state, but never from a state that has diverged."""
    start = time.perf_counter()
    state.loss_unlogged = meter.loss_sum.item()
    state.step_stats = step_stats.snapshot()
    state.skipped_steps = job.scaler.skipped_updates()
    check_finite(state.loss_sum + state.loss_unlogged, "the training loss", state, job.run)
    check_finite(weight_norm(job.model), "the weight norm", state, job.run)
    job.run.save_last(training_checkpoint(job.cfg, job.model, job.optimizer, job.scaler, state, job.world))
    state.checkpoint_seconds += time.perf_counter() - start  # (a resumed run's last.pt lacks its own writing)


def check_finite(value: float, what: str, state: RunState, run: RunFolder) -> None:
    """End the run on a non-finite loss or weight, before it can overwrite a good checkpoint."""
    if math.isfinite(value):
        return
    kept = (f"The last good checkpoints are kept; best so far: val_acc {state.best_val_acc:.4f} at iteration "
            f"{state.best_iter} ({run.file(schema.BEST)})" if state.best_iter else
            "No evaluation had run yet, so there is no checkpoint")
    raise TrainingDiverged(
        f"{what} became {value} by iteration {state.step}; stopped as the reference does. {kept}. "
        "Try a lower --optim_lr or --optim_global_clipping")


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a checkpoint is written.

    Only a second Ctrl-C (SIGINT) stops at once, unsaved. A repeated SIGTERM is the same request:
    `timeout` and some schedulers signal both the process and its process group, so the run gets
    two SIGTERMs within microseconds (seen on a GPU machine, where it cost the unsaved iterations).
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:  # Ctrl-C twice: stop now
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            if self.received is not None and sig == signal.SIGTERM:
                handler = signal.SIG_IGN  # stopping already: a repeated SIGTERM must not break the exit
            signal.signal(sig, handler)
