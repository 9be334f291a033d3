"""Scoring many images with one model or an ensemble: the test split, each corruption and severity,
each OOD set, in large inference batches on the device."""

from __future__ import annotations

import time

import numpy as np
import torch

from resbench.console import log, progress
from resbench.data import evalsets
from resbench.data.facts import SEVERITIES
from resbench.data.prepared import to_tensor
from resbench.evaluate.checkpoints import Member
from resbench.evaluate.metrics import predict_logits, probability_metrics
from resbench.evaluate.uncertainty import ensemble_log_probs, log_probs, ood_metrics, ood_scores
from resbench.runs.schema import CORRUPTION_METRICS, OOD_SCORES


class Scorer:
    """Every member's logits for uint8 images, in large inference batches on the device.

    Images go to the device as uint8 (as in training) one set or corruption at a time, and a
    set stored at 64x64 is halved there for a 32x32 model. A progress bar runs on a terminal;
    one line per set on stderr says how many images went through and how fast.
    """

    def __init__(self, members: list[Member], device: torch.device, batch_size: int):
        self.models = [m.model for m in members]
        self.device, self.batch_size = device, batch_size
        self.image_size = members[0].spec.image_size
        self.heads = len(members) + (len(members) > 1)  # the members, and their ensemble

    def __call__(self, images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
        """(M, N, C) float32 logits on the CPU."""
        start = time.perf_counter()
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # a read-only memory map: torch wants memory it may write
        x = images if isinstance(images, torch.Tensor) else to_tensor(images, self.device)
        x = evalsets.at_model_size(x.to(self.device), self.image_size, name)
        with progress(len(x) * len(self.models), name, unit="img") as bar:
            logits = torch.stack([predict_logits(model, x, self.batch_size, on_batch=bar.update).cpu()
                                  for model in self.models])
        seconds = time.perf_counter() - start
        log(f"{name}: {len(x):,} images x {len(self.models)} model(s) in {seconds:.1f} s "
            f"({len(x) * len(self.models) / max(seconds, 1e-9):,.0f} images/s)")
        return logits


def heads(logits: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(log-probabilities, logits) of each member and, for several, of their ensemble last."""
    found = [(log_probs(member), member) for member in logits]
    return found + [(ensemble_log_probs(logits), logits)] if len(logits) > 1 else found


def mean_figures(figures: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([f[k] for f in figures])) for k in CORRUPTION_METRICS}


def corruption_figures(score: Scorer, name: str, data_root: str) -> list[dict]:
    """Accuracy, NLL and ECE per corruption and severity, and their means, for each head."""
    spec = evalsets.EVAL_SETS[name]
    labels, files = evalsets.corrupted_set(name, data_root)
    n = len(labels) // SEVERITIES
    labels = torch.from_numpy(labels)
    found: list[dict[str, dict[str, dict]]] = [{} for _ in range(score.heads)]
    for corruption, images in files:
        for h, (log_p, _) in enumerate(heads(score(images, f"{name} {corruption}"))):
            block = {}
            for s in range(1, SEVERITIES + 1):
                figures = probability_metrics(log_p[(s - 1) * n:s * n], labels[(s - 1) * n:s * n])
                block[str(s)] = {k: figures[k] for k in CORRUPTION_METRICS}
            found[h][corruption] = {**block, "mean": mean_figures(list(block.values()))}
    return [corruption_summary(spec, per_corruption, n) for per_corruption in found]


def corruption_summary(spec: evalsets.EvalSet, per_corruption: dict[str, dict], n: int) -> dict:
    """The means: over the benchmark's corruptions and all severities (mCA and its NLL and ECE),
    per severity, and over every corruption of the set where it has more than the benchmark's."""
    severities = [str(s) for s in range(1, SEVERITIES + 1)]
    summary = {"set": spec.name, "images_per_severity": n, "benchmark": list(spec.benchmark),
               "mean": mean_figures([per_corruption[c][s] for c in spec.benchmark for s in severities]),
               "by_severity": {s: mean_figures([per_corruption[c][s] for c in spec.benchmark]) for s in severities},
               "corruptions": per_corruption}
    if set(per_corruption) != set(spec.benchmark):
        summary["mean_all"] = mean_figures([f[s] for f in per_corruption.values() for s in severities])
    return summary


def ood_figures(score: Scorer, names: list[str], data_root: str, id_logits: torch.Tensor) -> list[dict]:
    """AUROC, AUPR-In/Out and FPR95 of each score against each OOD set, for each head."""
    id_scores = [ood_scores(*head) for head in heads(id_logits)]
    found: list[dict] = [{} for _ in id_scores]
    for name in names:
        count, chunks = evalsets.ood_chunks(name, data_root, score.image_size, id_logits.shape[1])
        logits = torch.cat([score(chunk, f"{name} (OOD)") for chunk in chunks], dim=1)
        for h, head in enumerate(heads(logits)):
            out_scores = ood_scores(*head)
            found[h][name] = {"n": count, **{s: ood_metrics(id_scores[h][s], out_scores[s]) for s in OOD_SCORES}}
    return found
