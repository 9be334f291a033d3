"""Accuracy, NLL and calibration of a model on a whole split, in large inference-mode batches: what
training evaluates every `eval_every` iterations, and the figures `resbench eval` adds."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resbench.data.batches import to_model_input
from resbench.device.distributed import World, all_reduce_sum, shard
from resbench.evaluate.uncertainty import log_probs

EVAL_BATCH_SIZE = 1024
# On a CPU a batch whose layer outputs stay in the caches scores faster, with the same logits bit for bit
# (tests/evaluate/test_robustness.py): on 2 cores, depth 20 scored 1,067-1,293 images/s at 64, 1,284 at 128,
# 751-913 at 512 and 638 at 1024 (`benchmarks/eval_throughput.py --per_severity 200 --eval_batch_size N`).
CPU_EVAL_BATCH_SIZE = 64


def eval_batch_size(device: torch.device) -> int:
    """The inference batch of training's evaluations and of `resbench eval` on `device`."""
    return CPU_EVAL_BATCH_SIZE if device.type == "cpu" else EVAL_BATCH_SIZE


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   autocast: contextlib.AbstractContextManager | None = None,
                   on_batch: Callable[[int], object] | None = None) -> torch.Tensor:
    """float32 logits (N, C) for uint8 NHWC `images`, with BatchNorm in inference mode.

    `on_batch(n)` is called after each batch of n images (a progress bar's update)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast or contextlib.nullcontext():
            outputs.append(model(to_model_input(images[start:start + batch_size])).float())
        if on_batch is not None:
            on_batch(len(outputs[-1]))
    model.train(was_training)
    return torch.cat(outputs)


TOP5_MIN_CLASSES = 100  # CIFAR-100 and TinyImageNet also report top-5 accuracy, as their literature does


def reports_top5(num_classes: int) -> bool:
    return num_classes >= TOP5_MIN_CLASSES


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             autocast: contextlib.AbstractContextManager | None = None, world: World = World(),
             top5: bool = False) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood over the whole split (and top-5 accuracy if asked).

    In a data-parallel run each rank scores its share and the sums are added up across ranks.
    """
    part = shard(len(images), world)
    logits = predict_logits(model, images[part], eval_batch_size(images.device), autocast)
    labels = labels[part]
    sums = [(logits.argmax(1) == labels).sum().float(), F.cross_entropy(logits, labels, reduction="sum")]
    if top5:
        sums.append((logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum().float())
    figures = (all_reduce_sum(torch.stack(sums), world) / len(images)).tolist()
    return dict(zip(("acc", "nll", "top5"), figures))


# ---------------------------------------------------------------- calibration (resbench eval)
# Accuracy and NLL say how good the best-val checkpoint is; ECE and Brier say whether its confidence
# can be trusted, and temperature scaling shows how much of the miscalibration one scalar removes.

ECE_BINS = 15


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature), in float64."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE over `n_bins` equal-width confidence bins (lo, hi]: sum over bins of |B|/N * |acc(B) - conf(B)|."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    bins = (torch.ceil(confidence.double() * n_bins).long() - 1).clamp(0, n_bins - 1)
    gap = torch.bincount(bins, weights=correct - confidence.double(), minlength=n_bins)
    return (gap.abs().sum() / len(labels)).item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of the summed squared error between the probabilities and the one-hot label."""
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return ((probs.double() - onehot) ** 2).sum(dim=1).mean().item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T), found by LBFGS on log T (which keeps T positive)."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.exp().item()


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score of softmax(logits / temperature)."""
    return probability_metrics(log_probs(logits.detach().cpu() / temperature), labels.cpu())


def probability_metrics(log_p: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score of predicted log-probabilities: one model's, or
    an ensemble's (the log of its members' mean probabilities)."""
    probs = log_p.exp()
    return {
        "acc": (log_p.argmax(dim=1) == labels).double().mean().item(),
        "nll": -log_p.gather(1, labels[:, None]).mean().item(),
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
    }
