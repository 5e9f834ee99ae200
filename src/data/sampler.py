"""Epoch-seeded batches that are the same on 1 or N processes, and after a resume."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's part of each global batch of a permutation seeded by (seed, epoch).

    The order depends only on the seed and the epoch (`set_epoch`), so a resumed run sees exactly
    the batches of an uninterrupted run, and N processes together see the batches one process
    would: global batch i is permutation[i*B:(i+1)*B], split into N nearly equal parts. A trailing
    batch too small to give every rank two images is dropped: all ranks then take the same number
    of steps (DistributedDataParallel needs that) and BatchNorm never sees a lone image. With
    `keep_all` (evaluation) every image is kept and ranks may take different numbers of batches.
    An epoch interrupted after N batches resumes with `set_epoch(epoch, first_batch=N)`, which
    yields (and counts) only the batches after those.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, limit: int | None = None, keep_all: bool = False) -> None:
        self.batch_size, self.seed, self.shuffle, self.keep_all = batch_size, seed, shuffle, keep_all
        self.rank, self.world_size = rank, world_size
        self.size = size if limit is None else min(limit, size)
        self.epoch, self.first_batch = 0, 0

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.epoch, self.first_batch = epoch, first_batch

    def _global_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).numpy()
        else:
            order = np.arange(self.size)
        batches = [order[i:i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        return [b for b in batches if self._kept(len(b))][self.first_batch:]

    def _kept(self, batch_length: int) -> bool:
        """Whether a global batch of this length is used (see the class docstring)."""
        return batch_length > self.rank if self.keep_all else batch_length >= 2 * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield np.array_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        # Lengths alone decide which batches are kept: no permutation needed to count them.
        lengths = (min(self.batch_size, self.size - start) for start in range(0, self.size, self.batch_size))
        return max(sum(self._kept(length) for length in lengths) - self.first_batch, 0)
