"""One training step of the recipe and what it runs with: the learning-rate schedule, the SGD update
(clipping and the reference's step statistics), and `build_job`, which builds the model, optimiser
and hot path from a run's settings and its batches. `resbench train` and `resbench bench` both
train through these, so that the benchmark times the step a run takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from resbench.data.batches import TrainBatches
from resbench.data.facts import DatasetSpec
from resbench.data.prepared import Splits
from resbench.device import bngroups, bnstats, distributed, hotpath
from resbench.models.resnet import count_parameters, resnet
from resbench.runs.folder import RunFolder
from resbench.settings.config import TrainConfig, learning_rate
from resbench.train.lossscale import ConstantLossScale
from resbench.train.resume import RunState


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: ConstantLossScale,
               images: torch.Tensor, labels: torch.Tensor, lr: float | Callable[[], float], cfg: TrainConfig,
               autocast: Any, measure_grad_norm: bool = False, stats: StepStats | None = None,
               logged_lr: float | None = None) -> tuple[torch.Tensor, float | None, float]:
    """One SGD update. Returns the (device) loss, the gradient norm when asked for (with clipping
    on, the norm of g + wd·p before clipping), and the learning rate taken.

    `lr` may be a function, called once the forward and backward pass are queued: under fp16 the
    schedule waits for the previous step's skip flag (`Job.learning_rate`), which the device has
    written by then. `stats` accumulates the step's learning rate and weight and gradient norms
    (on the device); the learning rate it logs is `logged_lr` where given (the reference logs the
    schedule at its iteration counter, which a skipped fp16 update does not hold back: `Job.step`),
    else the one taken.
    """
    with autocast:
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim_label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale_loss(loss).backward()
    lr = lr() if callable(lr) else lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    grad_norm = None
    if stats is not None:
        scaler.unscale_(optimizer)  # the norms of the true gradients (a no-op without loss scaling)
        stats.add([p for p in model.parameters() if p.grad is not None], cfg.optim_weight_decay,
                  lr if logged_lr is None else logged_lr)
    if cfg.optim_global_clipping is not None:
        scaler.unscale_(optimizer)
        norm = clip_decayed_gradients_(optimizer, cfg.optim_global_clipping)
        grad_norm = norm.item() if measure_grad_norm else None
    elif measure_grad_norm:
        scaler.unscale_(optimizer)
        grad_norm = global_norm([p.grad for p in model.parameters() if p.grad is not None])
    scaler.step(optimizer)
    return loss.detach(), grad_norm, lr


@dataclass
class Job:
    """What one run trains with, built once by `build_job`; the loop reads its parts by name."""

    cfg: TrainConfig
    spec: DatasetSpec  # the dataset's facts: classes, image size, whether validation is the test set
    world: distributed.World
    device: torch.device
    precision: str
    model: torch.nn.Module  # the eager model: evaluation and checkpoints
    compiled: bool  # whether step_model is torch.compile'd
    step_model: Callable[[torch.Tensor], torch.Tensor]  # what train_step runs: compiled, or `model` itself
    optimizer: torch.optim.Optimizer
    scaler: ConstantLossScale
    autocast: Any
    batches: TrainBatches
    params: int
    bn_values: dict[str, int]  # values per channel in each BatchNorm's batch (see bnstats)
    run: RunFolder | None = None  # where `resbench train` writes; none for `bench`
    splits: Splits | None = None  # the evaluation splits of `resbench train`

    def step(self, step: int, stats: StepStats | None = None,
             measure_grad_norm: bool = False) -> tuple[torch.Tensor, float | None, float]:
        """Training iteration `step`: its batch, one `train_step` at the schedule's learning rate.
        Returns the loss, the gradient norm (if measured) and the learning rate taken.

        `stats` logs the schedule at `step` itself, as the reference logs `scheduler(state.step)`: its
        train state's step counts every iteration, skipped or not, so its logged trn/lr never lags
        (imagenet-curves.tsv), while the rate it applies, read from the optimiser's count, does."""
        images, labels = self.batches.batch(step)
        return train_step(self.step_model, self.optimizer, self.scaler, images, labels,
                          lambda: self.learning_rate(step), self.cfg, self.autocast,
                          measure_grad_norm=measure_grad_norm, stats=stats,
                          logged_lr=learning_rate(step, self.cfg))

    def learning_rate(self, step: int) -> float:
        """The schedule at the reference's optimiser count: iteration `step` less the fp16 updates
        skipped before it, since a skipped update leaves that count as it was (lossscale.py)."""
        return learning_rate(step - self.scaler.skipped_updates(), self.cfg)


def build_job(cfg: TrainConfig, spec: DatasetSpec, batches: TrainBatches, device: torch.device, precision: str,
              world: distributed.World = distributed.World(), run: RunFolder | None = None,
              splits: Splits | None = None) -> Job:
    """The model initialised from the seed, its optimiser, and the hot path's choices applied, to
    train on `batches` (the caller's: a dataset's, or bench's generated images) of the set `spec` describes."""
    torch.manual_seed(cfg.seed)
    model = resnet(cfg.resnet_depth, cfg.resnet_width, spec.num_classes, spec.image_size)
    model = hotpath.prepare_model(bngroups.group_batchnorms(model, cfg.bn_groups), device)
    parallel_model = distributed.wrap(model, device, world, cfg.sync_bn)
    compiled = hotpath.use_compile(cfg.compile, device, cfg.optim_ni)
    return Job(
        cfg=cfg, spec=spec, world=world, device=device, precision=precision, model=model, compiled=compiled,
        step_model=hotpath.step_model_of(parallel_model, compiled, device),
        optimizer=hotpath.make_optimizer(model, cfg.optim_momentum, cfg.optim_weight_decay, device),
        scaler=ConstantLossScale(device, enabled=precision == "fp16"),
        autocast=hotpath.autocast_for(precision, device), batches=batches,
        params=count_parameters(model),
        bn_values=bnstats.values_per_channel(model, spec.image_size, cfg.batch_size, world, cfg.sync_bn,
                                             cfg.bn_groups),
        run=run, splits=splits,
    )


class StepStats:
    """The reference's training statistics (its `trn/*` log figures): the means, over the steps since
    the last evaluation, of the learning rate (the schedule at the iteration counter, unlagged by
    skipped fp16 updates, as the reference logs it), of the norm of the parameters each gradient is taken
    at (w_norm), and of the norm of the gradient the optimiser applies, g + wd·p (g_norm; steps
    whose fp16 gradient overflowed are left out of it).

    The norms are summed on the device (float64), so a step never waits for them; they are read
    at evaluations, and saved in last.pt in between so that a resumed run logs the same means.
    """

    def __init__(self, state: RunState, device: torch.device):
        w_sum, g_sum, g_steps, self.lr_sum, self.steps = state.step_stats or [0.0] * 5
        self.sums = torch.tensor([w_sum, g_sum, g_steps], dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, params: list[torch.Tensor], weight_decay: float, lr: float) -> None:
        """One step: `params` with their (unscaled) gradients, before the update.

        Under no_grad: the parameters require grad, so otherwise each step's norms would join an
        autograd graph that `sums` keeps for the whole run (memory grows every step).
        """
        w_norm = device_norm(params)
        g_norm = device_norm(torch._foreach_add([p.grad for p in params], params, alpha=weight_decay))
        finite = torch.isfinite(g_norm)
        self.sums += torch.stack([w_norm, torch.where(finite, g_norm, 0.0), finite.float()])
        self.lr_sum += lr
        self.steps += 1

    def means(self) -> dict[str, float | None]:
        w_sum, g_sum, g_steps = self.sums.tolist()
        steps = max(self.steps, 1)
        return {"trn_lr": self.lr_sum / steps, "trn_w_norm": w_sum / steps,
                "trn_g_norm": g_sum / g_steps if g_steps else None}

    def reset(self) -> None:
        self.sums.zero_()
        self.lr_sum, self.steps = 0.0, 0

    def snapshot(self) -> list[float]:
        return [*self.sums.tolist(), self.lr_sum, self.steps]


def device_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of `tensors`, as a device tensor (no synchronisation)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).float())


def clip_decayed_gradients_(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Clip as the reference does: the global norm of g + wd·p, the weight decay term added first.

    torch's SGD adds wd·p inside step(), after any clipping, so each gradient is set to
    s·(g + wd·p) − wd·p, s = min(1, max_norm / norm): the update SGD then makes uses s·(g + wd·p).
    Returns the (device) norm before clipping; no host sync.
    """
    groups = [([p for p in group["params"] if p.grad is not None], group["weight_decay"])
              for group in optimizer.param_groups]
    with torch.no_grad():
        for params, wd in groups:
            if wd and params:
                torch._foreach_add_([p.grad for p in params], params, alpha=wd)
        norm = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad.float()) for params, _ in groups for p in params]))
        scale = torch.clamp(max_norm / norm, max=1.0)
        for params, wd in groups:
            if params:
                grads = [p.grad for p in params]
                torch._foreach_mul_(grads, scale.to(grads[0].dtype))
                if wd:
                    torch._foreach_sub_(grads, params, alpha=wd)
    return norm


def global_norm(tensors: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])).item()


def weight_norm(model: torch.nn.Module) -> float:
    return global_norm([p.detach() for p in model.parameters()])
