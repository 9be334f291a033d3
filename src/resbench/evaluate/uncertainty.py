"""Figures beyond accuracy: ensembles and their diversity, out-of-distribution (OOD) detection.

Everything works on log-probabilities in float64 on the CPU, so one model and an ensemble go
through the same metrics: a model's are ``log_softmax(logits)``, an ensemble's the log of the
mean of its members' probabilities. Definitions (the README lists them too):

- OOD scores, each oriented so that larger means "in-distribution": the maximum softmax
  probability ``max_c p_c`` (msp), the negated predictive entropy ``sum_c p_c log p_c``
  (entropy), and the log-sum-exp of the logits, i.e. the negated energy (energy; for an
  ensemble the mean of its members').
- AUROC: the probability that an in-distribution image scores above an OOD one (ties count
  half): the area under the ROC curve. AUPR-In: average precision with the in-distribution
  images as positives; AUPR-Out: with the OOD images as positives and the score negated (both as
  scikit-learn's ``average_precision_score``). FPR95: the fraction of OOD images scoring at or
  above the threshold that keeps 95% of the in-distribution images (the largest such threshold).
- Diversity: pairwise disagreement, the fraction of images on which two members' top classes
  differ, averaged over pairs; mean KL, ``KL(p_i || p_j)`` averaged over images and over ordered
  pairs i != j.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


def ensemble_log_probs(member_logits: torch.Tensor) -> torch.Tensor:
    """log of the mean of the members' probabilities, (M, N, C) -> (N, C), without leaving log space."""
    return torch.logsumexp(log_probs(member_logits), dim=0) - math.log(len(member_logits))


def ood_scores(log_p: torch.Tensor, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """The three scores of each image (larger = more in-distribution). ``logits`` is (N, C) for one
    model, (M, N, C) for an ensemble (whose energy score is its members' mean)."""
    energy = torch.logsumexp(logits.double(), dim=-1)
    return {
        "msp": log_p.max(dim=1).values.exp().numpy(),
        "entropy": (log_p.exp() * log_p).nan_to_num().sum(dim=1).numpy(),  # 0 * log 0 = 0
        "energy": (energy if energy.ndim == 1 else energy.mean(dim=0)).numpy(),
    }


def _ranked_counts(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, from the highest score down."""
    scores = np.concatenate([positives, negatives]).astype(np.float64)
    is_positive = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(is_positive)[last_of_tie]
    return tp, last_of_tie + 1 - tp


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    tp, fp = _ranked_counts(positives, negatives)
    tpr, fpr = np.r_[0, tp / tp[-1]], np.r_[0, fp / fp[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids: a tie counts half


def average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    tp, fp = _ranked_counts(positives, negatives)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0, recall]) * tp / (tp + fp)))


def fpr_at_tpr(positives: np.ndarray, negatives: np.ndarray, tpr: float = 0.95) -> float:
    tp, fp = _ranked_counts(positives, negatives)
    return float(fp[np.searchsorted(tp / tp[-1], tpr - 1e-12)] / fp[-1])


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 of one score separating in-distribution from OOD images."""
    return {
        "auroc": auroc(in_scores, out_scores),
        "aupr_in": average_precision(in_scores, out_scores),
        "aupr_out": average_precision(-out_scores, -in_scores),
        "fpr95": fpr_at_tpr(in_scores, out_scores),
    }


def diversity(member_logits: torch.Tensor) -> dict[str, float]:
    """Pairwise disagreement and mean pairwise KL divergence of an ensemble's members, (M, N, C)."""
    log_p = log_probs(member_logits)
    top = log_p.argmax(dim=-1)
    m = len(member_logits)
    pairs = [(i, j) for i in range(m) for j in range(m) if i != j]
    disagreement = np.mean([(top[i] != top[j]).double().mean().item() for i, j in pairs if i < j])
    kl = np.mean([(log_p[i].exp() * (log_p[i] - log_p[j])).nan_to_num().sum(dim=1).mean().item() for i, j in pairs])
    return {"disagreement": float(disagreement), "kl": float(kl)}
