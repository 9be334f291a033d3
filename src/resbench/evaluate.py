"""Evaluation: accuracy and NLL of a model on a whole split, in large inference-mode batches."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .config import resolve_device
from .data import DATASETS, dataset_spec, load_splits, to_model_input
from .distributed import World, all_reduce_sum, shard
from .errors import ResbenchError
from .models import architecture, resnet
from .report import invalid_fields

EVAL_BATCH_SIZE = 1024
# The settings of config.json that rebuild the model and find its data, with their JSON types.
MODEL_SETTINGS = {"data_name": str, "resnet_depth": int, "resnet_width": int}


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
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    probs = torch.softmax(logits / temperature, dim=1)
    return {
        "acc": (probs.argmax(dim=1) == labels).double().mean().item(),
        "nll": nll(logits, labels, temperature),
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
    }


# ---------------------------------------------------------------- resbench eval

def load_run_config(run_dir: Path) -> dict:
    """The training configuration saved beside a checkpoint; it fixes the model and dataset to rebuild."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ResbenchError(f"no config.json beside the checkpoint in {run_dir}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); evaluate a checkpoint in the run folder "
                              "that trained it") from None
    check_model_settings(config, path)
    return config


def check_model_settings(config: object, path: Path) -> None:
    """Refuse a config.json whose model or dataset cannot be rebuilt, before anything deeper fails on it."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object; evaluate a checkpoint in the run folder that trained it")
    if bad := invalid_fields(config, MODEL_SETTINGS):
        raise CheckpointError(f"{path} lacks a valid {', '.join(bad)}; was it written by resbench train?")
    try:
        dataset_spec(config["data_name"])
        architecture(config["resnet_depth"], config["resnet_width"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_checkpoint_model(ckpt: Path, config: dict, device: torch.device) -> torch.nn.Module:
    """Rebuild the run's network and load its best-val weights, in inference mode."""
    spec = DATASETS[config["data_name"]]
    model = resnet(config["resnet_depth"], config["resnet_width"], num_classes=spec.num_classes,
                   image_size=spec.image_size)
    try:
        model.load_state_dict(load_checkpoint(ckpt))
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{ckpt} does not hold the weights of the model in {Path(ckpt).parent / 'config.json'}"
                              f" ({detail}); evaluate the best.pt of that run folder") from None
    return model.to(device).eval()


def evaluate_checkpoint(ckpt: Path, data_root: str | None, split: str, temperature_scaling: bool,
                        device: str = "auto") -> dict:
    """All `resbench eval` figures for one checkpoint: metrics at T=1, and after temperature scaling if asked.

    Computed in float32 whatever the run's precision (the checkpoint holds float32 weights), so
    an fp16/bf16 run's figures can differ from its summary.json in the third decimal.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ResbenchError(f"no such checkpoint: {ckpt}")
    config = load_run_config(ckpt.parent)
    try:
        device = resolve_device(device)
    except ValueError as exc:
        raise ResbenchError(str(exc)) from None
    data_root = data_root or config.get("data_root")
    if not isinstance(data_root, str):
        raise CheckpointError(f"{ckpt.parent / 'config.json'} names no data_root; pass --data_root")
    model = load_checkpoint_model(ckpt, config, device)
    splits = load_splits(config["data_name"], data_root, device)

    def predictions(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of one split, on the CPU where the metrics are computed."""
        logits = predict_logits(model, getattr(splits, f"{name}_images"))
        return logits.cpu(), getattr(splits, f"{name}_labels").cpu()

    logits, labels = predictions(split)
    report = {"ckpt": str(ckpt), "data_name": config["data_name"], "split": split, "n": len(labels),
              **calibration_metrics(logits, labels)}
    if temperature_scaling:
        val_logits, val_labels = (logits, labels) if split == "val" else predictions("val")
        temperature = fit_temperature(val_logits, val_labels)
        report["temperature_scaling"] = {
            "temperature": temperature,
            "val_nll_before": nll(val_logits, val_labels),
            "val_nll_after": nll(val_logits, val_labels, temperature),
            **calibration_metrics(logits, labels, temperature),
        }
    return report


def format_eval_report(report: dict) -> str:
    """A small aligned text table: one column at T=1 and, if fitted, one at the fitted temperature."""
    scaled = report.get("temperature_scaling")
    lines = [f"{report['ckpt']}: {report['data_name']} {report['split']} split, {report['n']} images"]
    lines.append(f"{'':6}{'T=1':>10}" + (f"{'T=%.3f' % scaled['temperature']:>10}" if scaled else ""))
    for name in ("acc", "nll", "ece", "brier"):
        lines.append(f"{name:6}{report[name]:10.4f}" + (f"{scaled[name]:10.4f}" if scaled else ""))
    if scaled:
        lines.append(f"val nll {scaled['val_nll_before']:.4f} -> {scaled['val_nll_after']:.4f} "
                     f"after temperature scaling")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(args.ckpt, args.data_root, args.split, args.temperature_scaling, args.device)
    print(json.dumps(report, indent=2) if args.json else format_eval_report(report))
    return 0
