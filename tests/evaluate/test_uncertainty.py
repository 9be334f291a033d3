"""Metrics beyond accuracy (issue 15) against independent computations: scikit-learn for AUROC and
AUPR, numpy by hand for FPR95, ensemble NLL, disagreement and KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from resbench.evaluate import uncertainty


def sklearn_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    scores = np.concatenate([in_scores, out_scores])
    is_in = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return {"auroc": roc_auc_score(is_in, scores), "aupr_in": average_precision_score(is_in, scores),
            "aupr_out": average_precision_score(1 - is_in, -scores)}


def fpr95_by_hand(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """The largest threshold t with P(in >= t) >= 0.95 is the ceil(0.95 n)-th largest in-distribution score."""
    k = int(np.ceil(0.95 * len(in_scores)))
    threshold = np.sort(in_scores)[::-1][k - 1]
    return float(np.mean(out_scores >= threshold))


@pytest.mark.parametrize("case", ["continuous", "ties", "separable", "reversed"])
def test_ood_metrics_match_sklearn_and_a_hand_computation(case):
    rng = np.random.default_rng(7)
    in_scores, out_scores = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.5, 250)
    if case == "ties":  # scores rounded to a few values: many ties within and across the two sets
        in_scores, out_scores = np.round(in_scores), np.round(out_scores)
    elif case == "separable":
        out_scores = out_scores - 20
    elif case == "reversed":
        in_scores, out_scores = out_scores - 20, in_scores

    got = uncertainty.ood_metrics(in_scores, out_scores)

    oracle = sklearn_metrics(in_scores, out_scores)
    assert {k: got[k] for k in ("auroc", "aupr_in", "aupr_out")} == pytest.approx(oracle, abs=1e-12)
    assert got["fpr95"] == pytest.approx(fpr95_by_hand(in_scores, out_scores), abs=1e-12)
    if case == "separable":
        assert got == pytest.approx({"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0})


def test_fpr95_at_exactly_95_percent():
    in_scores = np.arange(20.0)  # TPR reaches 0.95 exactly at threshold 1 (19 of 20 above or equal)
    out_scores = np.array([0.5, 1.0, 1.5, 30.0])
    assert uncertainty.fpr_at_tpr(in_scores, out_scores) == pytest.approx(0.75)
    assert fpr95_by_hand(in_scores, out_scores) == pytest.approx(0.75)


def test_ood_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    scores = uncertainty.ood_scores(uncertainty.log_probs(logits), logits)
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    assert scores["msp"] == pytest.approx(p.max(1))
    assert scores["entropy"] == pytest.approx((p * np.log(p)).sum(1))
    assert scores["entropy"][1] == pytest.approx(-np.log(3))  # uniform: the least in-distribution
    assert scores["energy"] == pytest.approx(np.log(np.exp(logits.numpy()).sum(1)))


def test_ensemble_probabilities_nll_and_diversity_by_hand():
    rng = np.random.default_rng(8)
    logits = rng.normal(0, 3, (3, 50, 4))
    labels = rng.integers(0, 4, 50)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mean_p = p.mean(0)

    log_p = uncertainty.ensemble_log_probs(torch.from_numpy(logits))
    div = uncertainty.diversity(torch.from_numpy(logits))
    scores = uncertainty.ood_scores(log_p, torch.from_numpy(logits))

    np.testing.assert_allclose(log_p.exp().numpy(), mean_p, rtol=1e-12)
    assert -log_p[np.arange(50), labels].mean().item() == pytest.approx(-np.log(mean_p[np.arange(50), labels]).mean())
    top = p.argmax(-1)
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert div["disagreement"] == pytest.approx(np.mean([(top[i] != top[j]).mean() for i, j in pairs]))
    kl = [(p[i] * np.log(p[i] / p[j])).sum(-1).mean() for i in range(3) for j in range(3) if i != j]
    assert div["kl"] == pytest.approx(np.mean(kl))
    assert scores["energy"] == pytest.approx(np.log(np.exp(logits).sum(-1)).mean(0))
    assert scores["msp"] == pytest.approx(mean_p.max(1))


def test_identical_members_have_no_diversity():
    logits = torch.randn(1, 30, 5).repeat(3, 1, 1)
    assert uncertainty.diversity(logits) == pytest.approx({"disagreement": 0.0, "kl": 0.0})
    np.testing.assert_allclose(uncertainty.ensemble_log_probs(logits).numpy(), uncertainty.log_probs(logits[0]).numpy(),
                               atol=1e-12)
