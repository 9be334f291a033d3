"""Training batches streamed from the memory-mapped training file, for a set too large for the device.

The batches are those of `data.batches.TrainBatches`, bit for bit: the same permutation, the same rows,
crops and flips (drawn on the training device as there). Only where a batch's uint8 rows come from
differs: a prefetch thread gathers the rows of the next `AHEAD` steps from the file into pinned host
buffers and copies them to the device on a stream of its own, so the step finds its images there and
never waits for the disk or the copy (on a CPU the thread gathers ahead in the same way, without the
copy). A step asked for out of order (a resumed run, a benchmark) restarts the thread from that step.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch

from resbench.data.batches import TrainBatches

AHEAD = 3  # batches handed over ahead of the step
# Host buffers the rows are gathered into, in turn: the step's, the AHEAD waiting, and the one being gathered.
BUFFERS = AHEAD + 2


@dataclass
class Gathered:
    """One step's rows on the device, and the event its copy there completes at (None on a CPU)."""

    step: int
    images: torch.Tensor
    copied: torch.cuda.Event | None = None


class StreamedBatches(TrainBatches):
    """TrainBatches whose images stay in host memory (a CPU tensor over the memory-mapped file) and
    reach `device` AHEAD batches before their step. `close()` ends the prefetch thread."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        super().__init__(images, labels, batch_size, seed, rank, world_size, device or labels.device)
        self._queue: queue.Queue[Gathered | BaseException] = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = -1  # the step the thread hands over next
        share = self.share.stop - self.share.start
        pinned = self.device.type == "cuda"
        self._buffers = [torch.empty((share, *images.shape[1:]), dtype=images.dtype, pin_memory=pinned)
                         for _ in range(BUFFERS)]

    @property
    def buffer_bytes(self) -> int:
        """Host memory of the buffers the rows are gathered into (pinned on a GPU machine)."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self._buffers)

    def gather(self, step: int, idx: torch.Tensor) -> torch.Tensor:
        if step != self._next:
            self._start(step)
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        self._next = step + 1
        if item.copied is not None:  # the copy ran on the thread's stream: the step's stream waits for it
            current = torch.cuda.current_stream(self.device)
            current.wait_event(item.copied)
            item.images.record_stream(current)
        return item.images

    def _start(self, step: int) -> None:
        self.close()
        self._stop.clear()
        self._queue = queue.Queue(AHEAD)
        self._thread = threading.Thread(target=self._prefetch, args=(step, self._queue), daemon=True,
                                        name="resbench-prefetch")
        self._thread.start()

    def _prefetch(self, step: int, out: queue.Queue) -> None:
        """Gather step after step from `step` on, until stopped; an error is handed over to the step."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        copied: list[torch.cuda.Event | None] = [None] * len(self._buffers)
        epoch, perm = -1, None
        try:
            while not self._stop.is_set():
                if step // self.steps_per_epoch != epoch:
                    epoch = step // self.steps_per_epoch
                    perm = self.permutation(epoch)
                rows, _ = self.rows(perm, step)
                slot = step % len(self._buffers)
                if copied[slot] is not None:
                    copied[slot].synchronize()  # its previous rows have reached the device
                host = torch.index_select(self.images, 0, rows, out=self._buffers[slot][:len(rows)])
                item = self._to_device(step, host, stream)
                copied[slot] = item.copied
                while not self._put(out, item):
                    pass
                step += 1
        except BaseException as exc:  # noqa: BLE001 (the step raises it, where it can be reported)
            self._put(out, exc)

    def _to_device(self, step: int, host: torch.Tensor, stream: torch.cuda.Stream | None) -> Gathered:
        if stream is None:
            return Gathered(step, host)  # used by its step before its buffer comes round again
        with torch.cuda.stream(stream):
            images = host.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        return Gathered(step, images, copied)

    def _put(self, out: queue.Queue, item: Gathered | BaseException) -> bool:
        """Hand `item` over, waiting for room; False if there was none for a while (try again), True once
        handed over or when the thread is to stop."""
        try:
            out.put(item, timeout=0.1)
        except queue.Full:
            return self._stop.is_set()
        return True

    def close(self) -> None:
        """End the prefetch thread (a later `batch` starts another)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._next = -1
