"""The training loop: one run of the reference recipe, readable top to bottom in `train()`.

Where each number of a results table comes from:
- val_acc: `evaluate()` on the validation split every `eval_every` iterations and at the last;
  the best one is kept (`RunState.best_val_acc`).
- tst_acc, tst_nll: `evaluate()` on the test split, run only when val_acc improves, so they are
  the test figures of the best-validation checkpoint (`best.pt`).
- params: `count_parameters()` of the model built by `models.resnet()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, data, distributed, fetch, hotpath, models
from .errors import ResbenchError
from .evaluate import evaluate
from .runlog import RunFolder

PROGRESS_EVERY = 50  # iterations between progress updates (each one synchronises with the device)
MAX_WIDTH = 64  # width 64 is a ~1.1e9-parameter depth-20 network; beyond is a typo, not a baseline


@dataclass
class TrainConfig:
    """Every setting of a run, named as the reference's flags; defaults are the seed's command."""

    data_name: str = "CIFAR10_x32"
    resnet_depth: int = 20
    resnet_width: int = 1
    batch_size: int = 256
    optim_ni: int = 48_000
    optim_lr: float = 0.1
    optim_momentum: float = 0.9
    optim_weight_decay: float = 0.001
    optim_label_smoothing: float = 0.0
    optim_global_clipping: float | None = None  # max global gradient norm; None = no clipping
    seed: int = 42
    data_root: str = "./data"
    save: str | None = None  # run folder; None = runs/<data_name>/<default_run_name()>
    mixed_precision: str = "false"  # false | true (fp16 on CUDA, bf16 elsewhere) | fp16 | bf16
    eval_every: int = 1000
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: str = "auto"  # auto | true | false; auto: where the run repays the compile time
    sync_bn: bool = False  # data-parallel runs: BatchNorm statistics over the global batch
    deterministic: bool = False  # deterministic CUDA kernels (slower; changes the numbers slightly)
    tensorboard: bool = False  # also write the evaluation records as TensorBoard scalars

    @property
    def precision(self) -> str:
        return precision_for(self.mixed_precision, resolve_device(self.device))


# Settings that do not change a single number of the results; a run may resume with them changed.
RESUMABLE_CHANGES = {"data_root", "save", "device", "compile", "tensorboard"}


class ConfigError(ResbenchError, ValueError):
    """A setting is impossible; the message names the flag and what to use instead."""


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the run stops as the reference does."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was checkpointed and the run can resume."""


@dataclass
class RunState:
    """Everything besides model, optimiser, scaler and RNGs that a resumed run needs to continue exactly.

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
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0
    # Loss summed since the last logging point, kept apart from `loss_sum` so that an interruption
    # does not change how the sum is rounded (a resumed run logs the very same trn_loss).
    loss_unlogged: float = 0.0
    skipped_steps: int = 0  # fp16 updates the loss scaler skipped (gradients not finite)
    train_seconds: float = 0.0  # time spent in training steps (evaluation excluded)
    wall_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluation


def validate_config(cfg: TrainConfig) -> None:
    """Reject impossible settings up front, each with one line naming the flag and the fix."""
    try:
        check_settings(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_settings(cfg: TrainConfig) -> None:
    data.dataset_spec(cfg.data_name)
    models.architecture(cfg.resnet_depth, cfg.resnet_width)  # raises on unsupported depth/width
    if cfg.resnet_width > MAX_WIDTH:
        raise ValueError(f"--resnet_width {cfg.resnet_width} is out of range: use 1 to {MAX_WIDTH}")
    if not 0 <= cfg.seed < 2**63:
        raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1, got {cfg.seed}")
    positive = {"batch_size": cfg.batch_size, "optim_ni": cfg.optim_ni, "eval_every": cfg.eval_every}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if not cfg.optim_lr > 0 or not math.isfinite(cfg.optim_lr):
        raise ValueError(f"--optim_lr must be a positive number, got {cfg.optim_lr}")
    if not 0 <= cfg.optim_momentum < 1:
        raise ValueError(f"--optim_momentum must be in [0, 1), got {cfg.optim_momentum}")
    if not 0 <= cfg.optim_weight_decay < 1:
        raise ValueError(f"--optim_weight_decay must be in [0, 1), got {cfg.optim_weight_decay}")
    if not 0 <= cfg.optim_label_smoothing < 1:
        raise ValueError(f"--optim_label_smoothing must be in [0, 1), got {cfg.optim_label_smoothing}")
    if cfg.optim_global_clipping is not None and not cfg.optim_global_clipping > 0:
        raise ValueError(f"--optim_global_clipping must be positive, got {cfg.optim_global_clipping}")
    num_train = data.DATASETS[cfg.data_name].num_train
    if cfg.batch_size > num_train:
        raise ValueError(f"--batch_size {cfg.batch_size} is larger than the training split of "
                         f"{cfg.data_name} ({num_train} images)")
    precision_for(cfg.mixed_precision, resolve_device(cfg.device))
    world_size = distributed.launched_world().world_size
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} does not split evenly over {world_size} processes; "
                         f"use a multiple of {world_size}")
    if cfg.sync_bn and resolve_device(cfg.device).type != "cuda":
        raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm); leave it off on CPU")
    hotpath.parse_compile(cfg.compile)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'resbench[tensorboard]'")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name} is not supported (resbench trains on CPUs and CUDA GPUs): "
                         "use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name} does not exist: this machine has {torch.cuda.device_count()} "
                         f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def precision_for(mixed_precision: str, device: torch.device) -> str:
    """fp32 | fp16 | bf16. `true` means fp16 with loss scaling on CUDA and bf16 elsewhere."""
    choice = mixed_precision.lower()
    if choice in ("false", "fp32"):
        return "fp32"
    if choice == "true":
        return "fp16" if device.type == "cuda" else "bf16"
    if choice == "fp16" and device.type != "cuda":
        raise ValueError("--mixed_precision fp16 needs a CUDA device; use bf16 (or false) on "
                         f"{device.type}")
    if choice in ("fp16", "bf16"):
        return choice
    raise ValueError(f"--mixed_precision must be false, true, fp16 or bf16, got {mixed_precision!r}")


def default_run_name(cfg: TrainConfig) -> str:
    """A folder name that tells the settings apart, e.g. R20x1-b256-i48k-lr0.1-wd0.001-s42."""
    ni = f"{cfg.optim_ni // 1000}k" if cfg.optim_ni % 1000 == 0 else str(cfg.optim_ni)
    name = (f"R{cfg.resnet_depth}x{cfg.resnet_width}-b{cfg.batch_size}-i{ni}-lr{cfg.optim_lr:g}"
            f"-wd{cfg.optim_weight_decay:g}-s{cfg.seed}")
    if cfg.optim_momentum != 0.9:
        name += f"-m{cfg.optim_momentum:g}"
    if cfg.optim_label_smoothing:
        name += f"-ls{cfg.optim_label_smoothing:g}"
    if cfg.optim_global_clipping is not None:
        name += f"-clip{cfg.optim_global_clipping:g}"
    if cfg.precision != "fp32":
        name += f"-{cfg.precision}"
    if cfg.deterministic:
        name += "-det"
    return name


def run_folder_of(cfg: TrainConfig) -> Path:
    return Path(cfg.save) if cfg.save else Path("runs") / cfg.data_name / default_run_name(cfg)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 over floor(0.1·ni) steps, then cosine to 0 over floor(0.9·ni) steps.

    `step` counts updates from 0, as optax does: the first update uses lr 0.
    """
    warmup, decay = int(0.1 * cfg.optim_ni), int(0.9 * cfg.optim_ni)
    if step < warmup:
        return cfg.optim_lr * step / warmup
    progress = min(step - warmup, decay) / max(decay, 1)
    return cfg.optim_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def global_norm(tensors: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])).item()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, lr: float, cfg: TrainConfig,
               autocast: contextlib.AbstractContextManager, measure_grad_norm: bool = False,
               skipped: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None]:
    """One SGD update. Returns the (device) loss, and the gradient norm when asked for.

    With loss scaling on, adds 1 to the device counter `skipped` when the scaler skips the update.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim_label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    grad_norm = None
    if cfg.optim_global_clipping is not None or measure_grad_norm:
        scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        if cfg.optim_global_clipping is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim_global_clipping)
        if measure_grad_norm:
            grad_norm = global_norm([p.grad for p in params])
    scaler.step(optimizer)
    if skipped is not None and scaler.is_enabled():
        # Read on the device, without a sync; the per-step record is gone after update().
        skipped += sum(scaler._found_inf_per_device(optimizer).values())
    scaler.update()
    return loss.detach(), grad_norm


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run to `optim_ni` iterations (resuming if its folder holds a checkpoint)."""
    validate_config(cfg)
    configure_determinism(cfg.deterministic)
    device = resolve_device(cfg.device)
    world = distributed.init_world(device)
    try:
        device = distributed.local_device(device, world)
        agree = lambda failed: distributed.any_rank(failed, world, device)  # noqa: E731
        with RunFolder(run_folder_of(cfg), writer=world.is_main).claimed(agree) as run:
            return train_in_world(cfg, run, device, world)
    finally:
        distributed.shutdown(world)


def train_in_world(cfg: TrainConfig, run: RunFolder, device: torch.device, world: distributed.World) -> dict[str, Any]:
    precision = precision_for(cfg.mixed_precision, device)
    hotpath.warn_if_slow_precision(precision, device)
    wanted = dataclasses.asdict(cfg)
    if run.is_done():
        check_same_config(run.saved_config() or {}, wanted, run.path)
        summary = run.summary()
        print(f"{run.path} already holds a {summary.get('status')} run; not retraining it. "
              "Use another --save folder to train again.", file=sys.stderr)
        return summary
    resume_from = run.load_last()
    if resume_from is not None:
        check_same_config(resume_from["config"], wanted, run.path)
        check_same_device_kind(resume_from["state"], device, precision, run.file("last.pt"))
    elif run.leftovers():
        check_fresh_start(run, wanted)

    spec = data.dataset_spec(cfg.data_name)
    ensure_prepared(cfg, world, device)
    splits = data.load_splits(cfg.data_name, cfg.data_root, device)
    torch.manual_seed(cfg.seed)
    model = models.resnet(cfg.resnet_depth, cfg.resnet_width, spec.num_classes, spec.image_size)
    model = hotpath.prepare_model(model, device)
    params = models.count_parameters(model)
    optimizer = hotpath.make_optimizer(model, cfg.optim_momentum, cfg.optim_weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_for(precision, device)
    parallel_model = distributed.wrap(model, device, world, cfg.sync_bn)
    step_model = hotpath.step_model_of(parallel_model, hotpath.use_compile(cfg.compile, device, cfg.optim_ni), device)
    batches = data.TrainBatches(splits.train_images, splits.train_labels, cfg.batch_size, cfg.seed,
                                world.rank, world.world_size)

    state = RunState(device_type=device.type, precision=precision)
    if resume_from is not None:
        state = restore_training_state(resume_from, model, optimizer, scaler, world, run.file("last.pt"))
        state.device_type, state.precision = device.type, precision
        del resume_from  # the checkpoint's copy of model and optimiser is not needed any more
        run.rewrite_metrics(state.history)
    else:
        run.start(cfg, params, device, precision)
    if cfg.tensorboard:
        run.open_tensorboard(state.step)
    run.log(f"{'resuming at' if state.step else 'starting at'} iteration {state.step} of {cfg.optim_ni} "
            f"on {device} ({precision}), {params:,} trainable parameters")

    def fold_skipped() -> None:
        state.skipped_steps += int(skipped.item())
        skipped.zero_()

    def stop_if_diverged(value: float, what: str) -> None:
        """End the run on a non-finite loss or weight, before it can overwrite a good checkpoint."""
        if math.isfinite(value):
            return
        bar.close()
        run.finish(final_summary(cfg, run, state, params, device, precision, "diverged"))
        kept = (f"The last good checkpoints are kept; best so far: val_acc {state.best_val_acc:.4f} at iteration "
                f"{state.best_iter} ({run.path / 'best.pt'})" if state.best_iter else
                "No evaluation had run yet, so there is no checkpoint")
        raise TrainingDiverged(
            f"{what} became {value} by iteration {state.step}; stopped as the reference does. {kept}. "
            "Try a lower --optim_lr or --optim_global_clipping")

    def check_weights() -> None:
        stop_if_diverged(global_norm([p.detach() for p in model.parameters()]), "the weight norm")

    def save_last() -> None:
        state.loss_unlogged = loss_sum.item()
        fold_skipped()
        stop_if_diverged(state.loss_sum + state.loss_unlogged, "the training loss")
        check_weights()
        run.save_last({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                       "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                       "state": dataclasses.asdict(state), "rng": checkpoint.rng_states(),
                       "rank_buffers": distributed.rank_buffers(model, world)})

    bar = tqdm(total=cfg.optim_ni, initial=state.step, disable=not (sys.stderr.isatty() and world.is_main),
               dynamic_ncols=True, unit="it")
    loss_sum = torch.full((), state.loss_unlogged, device=device)  # summed on the device: no sync per step
    skipped = torch.zeros((), device=device)
    sync(device)
    session_start = interval_start = time.perf_counter()
    wall_at_session_start, interval_first_step = state.wall_seconds, state.step
    stop = False
    with StopSignals() as signals:
        for step in range(state.step, cfg.optim_ni):
            images, labels = batches.batch(step)
            is_eval = (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.optim_ni
            loss, grad_norm = train_step(step_model, optimizer, scaler, images, labels, learning_rate(step, cfg),
                                         cfg, autocast, measure_grad_norm=is_eval, skipped=skipped)
            loss_sum += loss
            state.loss_count += 1
            state.step = step + 1

            # A single process may stop at any step; ranks agree on stopping at logging points only.
            logging_point = is_eval or state.step % PROGRESS_EVERY == 0
            if logging_point or (signals.received is not None and not world.distributed):
                # The only place the loop waits for the device. The loss is folded into the state at
                # logging points only, signal or not, so a resumed run rounds its sum the same way.
                if logging_point:
                    state.loss_sum += distributed.all_reduce_sum(loss_sum, world).item() / world.world_size
                    loss_sum.zero_()
                    fold_skipped()
                    stop_if_diverged(state.loss_sum, "the training loss")
                stop = distributed.any_rank(signals.received is not None, world, device)
                now = time.perf_counter()
                state.train_seconds += now - interval_start
                state.wall_seconds = wall_at_session_start + now - session_start
                speed = (state.step - interval_first_step) * cfg.batch_size / max(now - interval_start, 1e-9)
                interval_start, interval_first_step = now, state.step
                bar.update(state.step - bar.n)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{learning_rate(step, cfg):.4f}",
                                img_s=f"{speed:.0f}")

            if is_eval:
                distributed.average_bn_statistics(model, world)
                record = evaluation_record(cfg, model, splits, state, grad_norm, autocast, step,
                                           batches.steps_per_epoch, world)
                stop_if_diverged(record["w_norm"], "the weight norm")
                if record["val_acc"] > state.best_val_acc:
                    state.best_val_acc, state.best_iter = record["val_acc"], state.step
                    test = evaluate(model, splits.test_images, splits.test_labels, autocast, world)
                    state.tst_acc, state.tst_nll = test["acc"], test["nll"]
                    record.update(tst_acc=test["acc"], tst_nll=test["nll"])
                    run.save_best(model.state_dict())
                record["best_val_acc"] = state.best_val_acc
                sync(device)
                state.wall_seconds = wall_at_session_start + time.perf_counter() - session_start
                record["elapsed_s"] = state.wall_seconds
                state.history.append(record)
                state.loss_sum, state.loss_count = 0.0, 0
                run.append_metrics(record)
                save_last()
                run.log(run.format_record(record))
                interval_start = time.perf_counter()  # evaluation time is not training time

            if stop and state.step < cfg.optim_ni:
                save_last()
                bar.close()
                raise Interrupted(f"stopped by a signal at iteration {state.step}; "
                                  f"the state is saved in {run.path}: run the same command again to resume")
    bar.close()
    summary = final_summary(cfg, run, state, params, device, precision, "finished")
    run.finish(summary)
    return summary


def ensure_prepared(cfg: TrainConfig, world: distributed.World, device: torch.device) -> None:
    """Fetch and prepare a missing dataset before training, as `resbench data download` would.

    Rank 0 prepares it while the others wait; ranks decide together, so a node that lacks the
    data (no shared file system) waits too and then fails with the usual "not prepared" error.
    """
    missing = bool(data.missing_prepared_files(cfg.data_name, cfg.data_root))
    if not distributed.any_rank(missing, world, device):
        return
    if world.is_main and missing:
        print(f"{cfg.data_name} is not prepared in {cfg.data_root}: fetching and preparing it now",
              file=sys.stderr)
        fetch.prepare_dataset(cfg.data_name, cfg.data_root)
    distributed.wait_for_rank0(world)


def evaluation_record(cfg: TrainConfig, model: torch.nn.Module, splits: data.Splits, state: RunState,
                      grad_norm: float | None, autocast: contextlib.AbstractContextManager,
                      step: int, steps_per_epoch: int, world: distributed.World) -> dict[str, Any]:
    """Validation figures plus the training statistics the reference logs at each evaluation."""
    val = evaluate(model, splits.val_images, splits.val_labels, autocast, world)
    return {
        "iter": state.step,
        "epoch": state.step / steps_per_epoch,
        "trn_loss": state.loss_sum / max(state.loss_count, 1),
        "trn_lr": learning_rate(step, cfg),
        "w_norm": global_norm([p.detach() for p in model.parameters()]),
        "g_norm": grad_norm,
        "val_acc": val["acc"],
        "val_nll": val["nll"],
        "skipped_steps": state.skipped_steps,
    }


def restore_training_state(saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, world: distributed.World, path: Path) -> RunState:
    """Load last.pt into the freshly built objects; a checkpoint of another model is a clear error."""
    try:
        model.load_state_dict(saved["model"])
        distributed.restore_rank_buffers(model, saved.get("rank_buffers", []), world)
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        state = RunState(**saved["state"])
        if not (isinstance(state.step, int) and 0 <= state.step and isinstance(state.history, list)
                and all(isinstance(record, dict) for record in state.history)):
            raise ValueError("its training state is malformed")
        checkpoint.restore_rng_states(saved["rng"])
    except torch.OutOfMemoryError:
        raise  # the device is full, the checkpoint is fine
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise checkpoint.CheckpointError(
            f"{path} does not fit this model and these settings ({detail}); "
            "delete it to start over, or use another --save folder") from None
    return state


def check_same_device_kind(saved_state: dict[str, Any], device: torch.device, precision: str, path: Path) -> None:
    """Refuse to resume on another kind of device: `--device` may change (cuda:0 to cuda:1), but
    `--mixed_precision true` means fp16 on CUDA and bf16 on CPU, and the augmentation is drawn
    from a generator on the device, which gives other numbers on CUDA than on CPU."""
    was_type = saved_state.get("device_type") or device.type
    was_precision = saved_state.get("precision") or precision
    if (was_type, was_precision) != (device.type, precision):
        raise checkpoint.CheckpointError(
            f"{path} was trained on {was_type} in {was_precision}; resuming on {device.type} would change "
            f"the run ({precision}, other random augmentations). Resume it with --device {was_type}, "
            "or use another --save folder")


def canonical(key: str, value: Any) -> Any:
    """One spelling per setting: `--mixed_precision` false/fp32/FALSE are the same run."""
    if key == "mixed_precision" and isinstance(value, str):
        return {"false": "fp32", "fp32": "fp32"}.get(value.lower(), value.lower())
    return value


def check_fresh_start(run: RunFolder, wanted: dict[str, Any]) -> None:
    """A new run starts in an empty folder, or over its own earlier start (same settings) that died
    before the first checkpoint; anything else there (another run, the user's files) is kept."""
    saved = run.saved_config()
    if saved is None:
        shown = ", ".join(run.leftovers()[:5])
        raise checkpoint.CheckpointError(f"{run.path} is not empty ({shown}) and holds no resbench run; "
                                         "use another --save folder")
    check_same_config(saved, wanted, run.path)


def check_same_config(saved: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    differing = [f"{key}: saved {saved.get(key)!r}, now {wanted.get(key)!r}"
                 for key in sorted(set(saved) | set(wanted))
                 if key not in RESUMABLE_CHANGES and canonical(key, saved.get(key)) != canonical(key, wanted.get(key))]
    if differing:
        raise checkpoint.CheckpointError(
            f"{path} holds a run with other settings ({'; '.join(differing)}); "
            "use another --save folder, or the saved settings to resume it")


def final_summary(cfg: TrainConfig, run: RunFolder, state: RunState, params: int, device: torch.device,
                  precision: str, status: str) -> dict[str, Any]:
    num_train = data.DATASETS[cfg.data_name].num_train
    return {
        "status": status,
        "data_name": cfg.data_name,
        "depth": cfg.resnet_depth,
        "width": cfg.resnet_width,
        "precision": precision,
        "params": params,
        "val_acc": state.best_val_acc if state.best_val_acc >= 0 else None,
        "tst_acc": state.tst_acc,
        "tst_nll": state.tst_nll,
        "best_iter": state.best_iter,
        "iterations": state.step,
        "skipped_steps": state.skipped_steps,
        "wall_seconds": state.wall_seconds,
        "images_per_sec": state.step * cfg.batch_size / state.train_seconds if state.train_seconds else None,
        "epochs_per_min": epochs_per_minute(state.history, cfg.batch_size, num_train),
        "device": run.device_name(device),
        "world_size": distributed.launched_world().world_size,
        "versions": run.versions(),
        "config": dataclasses.asdict(cfg),
    }
