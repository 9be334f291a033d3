"""The training images held on the device or streamed from their memory-mapped file: the same batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import tiny
from resbench.data.batches import TrainBatches
from resbench.device import holding, memory, streaming
from resbench.device.distributed import World
from resbench.device.streaming import StreamedBatches
from resbench.errors import ResbenchError

N, BATCH = 200, 48  # 4 full batches and one of 8 images padded with 40 zero images, every epoch


def mapped_images(tmp_path) -> torch.Tensor:
    images = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "train_images.npy", images)
    return torch.from_numpy(np.load(tmp_path / "train_images.npy", mmap_mode="c"))  # as load_splits maps it


def prefetching() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "resbench-prefetch"]


def batches_of(kind, images, labels, world_size=1, rank=0):
    return kind(images, labels, BATCH, seed=3, rank=rank, world_size=world_size)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_streamed_batches_are_the_resident_ones_bit_for_bit(tmp_path, device):
    images, labels = mapped_images(tmp_path), torch.arange(1, N + 1)
    steps = [*range(7), 3, 4, 11, 12]  # an epoch and more in order (its padded last batch), then out of order
    for world_size in (1, 2):
        for rank in range(world_size):
            resident = batches_of(TrainBatches, images.to(device), labels.to(device), world_size, rank)
            streamed = batches_of(StreamedBatches, images, labels.to(device), world_size, rank)
            for step in steps:
                (x, y), (xs, ys) = resident.batch(step), streamed.batch(step)
                assert torch.equal(x, xs) and torch.equal(y, ys), (world_size, rank, step)
            streamed.close()
    assert not prefetching()


def test_a_failure_in_the_prefetch_thread_is_raised_by_the_step(tmp_path, monkeypatch):
    batches = batches_of(StreamedBatches, mapped_images(tmp_path), torch.arange(N))
    monkeypatch.setattr(streaming.torch, "index_select", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O")))
    with pytest.raises(OSError, match="I/O"):
        batches.batch(0)
    batches.close()
    assert not prefetching()


def test_auto_streams_what_does_not_fit_and_says_so_before_training(tmp_path, monkeypatch):
    cfg = tiny(tmp_path / "run")
    held = holding.hold_data(cfg, torch.device("cpu"), World(), "fp32")
    assert held.placement == "device" and isinstance(held.batches, TrainBatches)
    assert held.statement.startswith("data: Digits_x32 held on cpu as uint8, 5.3 MiB: 3.8 MiB of training images")

    monkeypatch.setattr(memory, "device_memory", lambda device: (2**20, "this machine has available"))
    held = holding.hold_data(cfg, torch.device("cpu"), World(), "fp32")
    assert held.placement == "stream" and isinstance(held.batches, StreamedBatches)
    assert held.statement.startswith("data: Digits_x32's 3.8 MiB of training images stream from their memory-mapped "
                                     "file to cpu, 3 batches ahead of the step (host buffers of ")
    assert "they do not fit beside training: 5.3 MiB of images and " in held.statement


def test_the_processes_of_one_cpu_machine_share_its_memory_and_a_gpu_is_each_ones_own(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: (6 << 30, "it has"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert holding.process_memory(torch.device("cpu")) == (2 << 30, "it has")
    assert holding.process_memory(torch.device("cuda", 0)) == (6 << 30, "it has")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")  # (set but empty: one process)
    assert holding.process_memory(torch.device("cpu")) == (6 << 30, "it has")


def test_training_images_the_device_cannot_hold_are_one_line(monkeypatch):
    def out_of_memory(array, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.65 GiB")

    monkeypatch.setattr(holding, "to_tensor", out_of_memory)
    with pytest.raises(ResbenchError, match=r"^the 3.0 MiB of training images do not fit on cpu beside the run; "
                                            r"use --data_placement stream \(or auto\)$"):
        holding.images_on(torch.zeros(1024, 32, 32, 3, dtype=torch.uint8), torch.device("cpu"))
