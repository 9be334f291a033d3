"""A run on an ImageNet-format set (1000 classes, validation = test, a ragged epoch), shrunk as test_fetch
shrinks its specs: the whole training file trains, each evaluation scores the one split once, and the
epoch's last batch is padded as the reference pads it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from conftest import tiny
from resbench.data.facts import DATASETS
from resbench.train import loop
from resbench.train.loop import train

N, TEST = 40, 16  # batch 16: two full batches and one of 8 images padded with 8 zero images


def test_a_run_validates_once_on_the_test_set_and_pads_the_epochs_last_batch(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "ImageNet1k_x32", dataclasses.replace(DATASETS["ImageNet1k_x32"], num_train=N,
                                                                        num_test=TEST))
    folder = tmp_path / "data" / "ImageNet1k_x32"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", N), ("test", TEST)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 1000, n))
    scored = []
    monkeypatch.setattr(loop, "evaluate", lambda model, images, *args: scored.append(len(images)) or
                        {"acc": 0.5 + len(scored) / 100, "nll": 7.0 - len(scored), "top5": 0.9})

    summary = train(tiny(tmp_path / "run", data_name="ImageNet1k_x32", data_root=str(tmp_path / "data"),
                         optim_ni=6, eval_every=3))

    assert scored == [TEST, TEST]  # one split, scored once per evaluation
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1.0, 2.0]  # 3 steps an epoch: 40 images, the last batch padded
    assert all(r["tst_acc_at_eval"] == r["val_acc"] and r["tst_nll_at_eval"] == r["val_nll"] for r in records)
    assert summary["val_is_test"] is True and summary["tst_acc"] == summary["best_val_acc"] == 0.52
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "data: ImageNet1k_x32 held on cpu as uint8, 0.2 MiB: 0.1 MiB of training images, 0.0 MiB of evaluation " \
           "images (validation = test)" in log
