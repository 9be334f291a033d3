"""A run on an ImageNet-format set (1000 classes, validation = test, a ragged epoch), shrunk as the fetch
tests shrink theirs (tests/data/archives.py): the whole training file trains, each evaluation scores the one
split once, the epoch's last batch is padded as the reference pads it, and the images streamed from their file
train as the images held on the device do."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np

from conftest import tiny
from resbench.data.facts import DATASETS
from resbench.train import loop
from resbench.train.loop import train

N, TEST = 40, 16  # batch 16: two full batches and one of 8 images padded with 8 zero images


def test_a_run_validates_once_on_the_test_set_pads_the_epochs_last_batch_and_may_stream(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "ImageNet1k_x32", dataclasses.replace(DATASETS["ImageNet1k_x32"], num_train=N,
                                                                        num_val=TEST, num_test=TEST))
    folder = tmp_path / "data" / "ImageNet1k_x32"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", N), ("test", TEST)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 1000, n))
    scored = []
    monkeypatch.setattr(loop, "evaluate", lambda model, images, *args: scored.append(len(images)) or
                        {"acc": 0.5 + len(scored) % 2 / 100, "nll": 7.0 - len(scored) % 2, "top5": 0.9})
    records, logs = {}, {}
    for placement in ("device", "stream"):
        run = tmp_path / placement
        summary = train(tiny(run, data_name="ImageNet1k_x32", data_root=str(tmp_path / "data"), optim_ni=6,
                             eval_every=3, data_placement=placement))
        records[placement] = [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "eval_s")}
                              for line in (run / "metrics.jsonl").read_text().splitlines()]
        logs[placement] = (run / "log.txt").read_text()

    assert scored == [TEST] * 4  # one split, scored once per evaluation (two evaluations in each run)
    assert [r["epoch"] for r in records["device"]] == [1.0, 2.0]  # 3 steps an epoch: the last batch padded
    assert all(r["tst_acc_at_eval"] == r["val_acc"] and r["tst_nll_at_eval"] == r["val_nll"] for r in records["device"])
    assert summary["val_is_test"] is True and summary["tst_acc"] == summary["best_val_acc"] == 0.51
    assert records["stream"] == records["device"]  # the same batches: the same losses and norms
    assert ("data: ImageNet1k_x32 held on cpu as uint8, 0.2 MiB: 0.1 MiB of training images, 0.0 MiB of evaluation "
            "images (validation = test)") in logs["device"]
    assert ("data: ImageNet1k_x32's 0.1 MiB of training images stream from their memory-mapped file to cpu, 3 batches "
            "ahead of the step (host buffers of 0.2 MiB; --data_placement stream); 0.0 MiB of evaluation images "
            "(validation = test) held on cpu") in logs["stream"]
    assert not [t for t in threading.enumerate() if t.name == "resbench-prefetch"]  # ended with the run
