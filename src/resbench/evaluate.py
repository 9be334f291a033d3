"""Evaluation: accuracy and NLL of a model on a whole split, in large inference-mode batches."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .data import to_model_input
from .distributed import World, all_reduce_sum, shard

EVAL_BATCH_SIZE = 1024


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """float32 logits (N, C) for uint8 NHWC `images`, with BatchNorm in inference mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast or contextlib.nullcontext():
            outputs.append(model(to_model_input(images[start:start + batch_size])).float())
    model.train(was_training)
    return torch.cat(outputs)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             autocast: contextlib.AbstractContextManager | None = None, world: World = World()) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood over the whole split.

    In a data-parallel run each rank scores its share and the sums are added up across ranks.
    """
    part = shard(len(images), world)
    logits = predict_logits(model, images[part], autocast=autocast)
    labels = labels[part]
    sums = torch.stack([(logits.argmax(1) == labels).sum().float(),
                        F.cross_entropy(logits, labels, reduction="sum")])
    correct, nll = (all_reduce_sum(sums, world) / len(images)).tolist()
    return {"acc": correct, "nll": nll}
