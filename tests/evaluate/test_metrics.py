"""The figures `resbench eval` reports (evaluate/metrics.py): accuracy, NLL, ECE, Brier and the fitted
temperature, each against a computation written out by hand in numpy, on random logits and on a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resbench.evaluate.metrics import brier_score, calibration_metrics, expected_calibration_error, fit_temperature, nll


def random_predictions(n: int = 600, classes: int = 7, sharpness: float = 3.0):
    """Overconfident logits: right about half the time, with large margins."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) * sharpness
    logits[torch.arange(n), labels] += 2.0
    return logits, labels


def numpy_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def numpy_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return -np.log(numpy_probs(logits, temperature)[np.arange(len(labels)), labels]).mean()


def numpy_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL, 15-bin ECE and Brier score written out loop by loop."""
    probs = numpy_probs(logits)
    conf, pred = probs.max(1), probs.argmax(1)
    ece = 0.0
    for b in range(15):
        in_bin = (conf > b / 15) & (conf <= (b + 1) / 15)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
    onehot = np.eye(logits.shape[1])[labels]
    return {"acc": (pred == labels).mean(), "nll": numpy_nll(logits, labels),
            "ece": ece, "brier": ((probs - onehot) ** 2).sum(1).mean()}


def test_calibration_metrics_match_numpy():
    logits, labels = random_predictions()
    ours = calibration_metrics(logits, labels)
    expected = numpy_metrics(logits.double().numpy(), labels.numpy())
    assert ours == pytest.approx(expected, abs=1e-9)
    assert 0.1 < ours["ece"] < 0.9  # really miscalibrated, so the comparison means something


def test_ece_and_brier_of_perfect_predictions_are_zero():
    labels = torch.tensor([0, 1, 2, 1])
    probs = torch.nn.functional.one_hot(labels, 3).double()
    assert expected_calibration_error(probs, labels) == 0.0
    assert brier_score(probs, labels) == 0.0


def test_fit_temperature_minimises_nll():
    logits, labels = random_predictions()
    t = fit_temperature(logits, labels)
    np_logits, np_labels = logits.double().numpy(), labels.numpy()
    grid = np.linspace(0.2, 10, 2000)
    best = grid[np.argmin([numpy_nll(np_logits, np_labels, g) for g in grid])]
    assert t > 1.5  # overconfident logits are softened
    assert t == pytest.approx(best, abs=0.01)
    assert nll(logits, labels, t) == pytest.approx(numpy_nll(np_logits, np_labels, t), abs=1e-12)
    assert nll(logits, labels, t) < nll(logits, labels)


def test_eval_matches_a_computation_by_hand(digits_runs, cli):
    from resbench.data.prepared import load_splits
    from resbench.evaluate.metrics import predict_logits
    from resbench.models.resnet import resnet

    run = digits_runs / "Digits_x32" / "R8x1-b32-i10-lr0.1-wd0.001-s1"
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads(cli("eval", "--ckpt", run / "best.pt", "--json", "--temperature_scaling",
                            check=True).stdout)
    model = resnet(8, 1, num_classes=10, image_size=32)
    model.load_state_dict(torch.load(run / "best.pt", weights_only=True))
    splits = load_splits("Digits_x32", "unused")
    by_hand = numpy_metrics(predict_logits(model, splits.test_images).double().numpy(), splits.test_labels.numpy())
    assert {k: report[k] for k in by_hand} == pytest.approx(by_hand, abs=1e-5)
    assert report["acc"] == pytest.approx(summary["tst_acc"], abs=1e-6)
    assert report["nll"] == pytest.approx(summary["tst_nll"], abs=1e-4)
    scaled = report["temperature_scaling"]
    assert scaled["temperature"] > 0 and scaled["val_nll_after"] < scaled["val_nll_before"]
    val = json.loads(cli("eval", "--ckpt", run / "best.pt", "--split", "val", "--json", check=True).stdout)
    assert val["acc"] == pytest.approx(summary["best_val_acc"], abs=1e-6)
