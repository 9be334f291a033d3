"""Training batches: whole-batch augmentation of the training split on its device.

A training batch is a slice of a per-epoch permutation, augmented (zero-pad 4, random crop,
horizontal flip) for the whole batch with one gather, so no per-image Python runs on the hot path
and no DataLoader is needed.

Batch `t` is a pure function of (seed, t): the permutation of epoch e is drawn from a generator
seeded with (seed, e), the crop offsets and flips of step t from one seeded with (seed, t). A run
resumed at step t therefore sees exactly the batches the uninterrupted run would have seen, and
data-parallel ranks can each cut their share out of the same global batch.

The epoch's last batch, as the reference's loader makes it: where the training split does not divide
by the batch (ImageNet: 1,281,167 = 1,251 x 1,024 + 143), the last batch of every epoch is filled
up with all-zero images labelled 0 and trained on whole, so an epoch is ceil(N / batch) steps. The
built-in CIFAR, TinyImageNet and Digits splits divide evenly and never see a padded batch.
"""

from __future__ import annotations

import torch

PAD = 4  # pixels of zero padding before the random crop


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float [0, 1] NCHW, kept in channels_last memory (no copy of the layout)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad by PAD, crop at offsets (dy, dx) in [0, 2·PAD], mirror where `flip`: one gather.

    images: uint8 B×H×W×C. Works in pixel space before normalisation, as the reference does.
    """
    b, h, w, c = images.shape
    padded = images.new_zeros(b, h + 2 * PAD, w + 2 * PAD, c)
    padded[:, PAD:PAD + h, PAD:PAD + w] = images
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = dy[:, None] + ar_h  # B×H
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # B×W
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


class TrainBatches:
    """The augmented training batches of one run: `batch(step)` for any step, in any order.

    With `world_size` > 1 each rank gets its contiguous share of the same global batch. The images
    are gathered from `images` on their device (`gather`); a streaming loader (`device.streaming`)
    gathers them from a memory-mapped file instead and crops them on `device`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        if batch_size > len(images):
            raise ValueError(f"batch_size {batch_size} is larger than the training split ({len(images)} images)")
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.share = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)  # this rank's
        self.steps_per_epoch = -(-len(images) // batch_size)  # a ragged last batch is padded (module doc)
        self.device = device or images.device
        self._epoch, self._perm = -1, None
        self._gen = torch.Generator(device=self.device)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch`, drawn on the CPU (the same on every device)."""
        gen = torch.Generator().manual_seed(stream_seed(self.seed, 1, epoch))
        return torch.randperm(len(self.images), generator=gen)

    def rows(self, perm: torch.Tensor, step: int) -> tuple[torch.Tensor, int]:
        """This rank's rows of batch `step` in the epoch's `perm`, and how many all-zero images follow
        them (the padding of the epoch's last batch falls to the ranks that hold its last places)."""
        b, i = self.batch_size, step % self.steps_per_epoch
        rows = perm[i * b:(i + 1) * b][self.share]
        return rows, self.share.stop - self.share.start - len(rows)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = step // self.steps_per_epoch
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, self.permutation(epoch).to(self.device, non_blocking=True)
        b = self.batch_size
        self._gen.manual_seed(stream_seed(self.seed, 2, step))
        offsets = torch.randint(0, 2 * PAD + 1, (2, b), generator=self._gen, device=self.device)
        flip = torch.rand(b, generator=self._gen, device=self.device) < 0.5
        share = self.share
        idx, pad = self.rows(self._perm, step)
        images, labels = self.gather(step, idx), self.labels[idx]
        if pad:
            images = torch.cat([images, images.new_zeros(pad, *images.shape[1:])])
            labels = torch.cat([labels, labels.new_zeros(pad)])
        return to_model_input(crop_flip(images, offsets[0, share], offsets[1, share], flip[share])), labels

    def gather(self, step: int, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images of rows `idx` (on the device) of batch `step`."""
        return self.images[idx]

    def close(self) -> None:
        """Nothing to end here (a streaming loader ends its prefetch thread)."""


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A distinct 63-bit seed for each (run seed, random stream, index)."""
    return ((seed * 1_000_003 + stream) * 1_000_000_007 + index) & 0x7FFF_FFFF_FFFF_FFFF
