"""torch Dataset over the decoded-image cache: batches leave it as the cache stores them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.masks import ZoneMaps
from src.data.sampler import EpochBatchSampler


class StoredBatch(NamedTuple):
    """A batch's inputs as the cache stores them, on the host (in pinned memory when the loader pins):
    what the loader yields, made into the model's input on the device by src/data/prepare.py. Integer
    maps travel at 1-2 bytes a pixel instead of a normalised float32 image and six float32 masks."""

    images: torch.Tensor  # [B, H, W] uint8 or uint16, as [Data] cache_dtype stores them
    zones: torch.Tensor | None  # with lung masks: [B, H, W] uint8 zone maps (src/data/masks.py), else None


class CSIDataset(Dataset):
    """Items are (StoredBatch of one image [H, W], labels LongTensor[6], FileID); see __getitems__ for batches.

    Images come from the cache (`images`, [N, H, W] uint8/uint16): item i is cache row
    `cache_rows[i]` with `labels[i]` and `file_ids[i]`, and with `zones` (zone maps by cache row,
    src/data/masks.py) its zone map. Nothing is decoded or normalised here.
    """

    def __init__(self, images: np.ndarray, cache_rows: Sequence[int], labels: np.ndarray,
                 file_ids: Sequence[str], zones: ZoneMaps | None = None) -> None:
        self.images, self.zones = images, zones
        self.cache_rows = np.asarray(cache_rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.file_ids = list(file_ids)

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, item: int) -> tuple[StoredBatch, torch.Tensor, str]:
        stored, labels, file_ids = self.__getitems__([item])
        return StoredBatch(*(None if part is None else part[0] for part in stored)), labels[0], file_ids[0]

    def __getitems__(self, items: list[int]) -> tuple[StoredBatch, torch.Tensor, list[str]]:
        """A whole batch, as collated: the DataLoader calls this instead of __getitem__ per item.

        One gather from the cache per batch, instead of per image plus a collate, keeps the loop's
        wait for the next batch a small part of a step. The values equal the stacked items.
        """
        rows = self.cache_rows[items]
        zones = None if self.zones is None else torch.from_numpy(self.zones[rows])
        stored = StoredBatch(torch.from_numpy(np.asarray(self.images[rows])), zones)
        return stored, self.labels[items], [self.file_ids[i] for i in items]


def _batched(batch: tuple) -> tuple:
    """The collate for a dataset whose __getitems__ already returns the batch."""
    return batch


def make_loader(dataset: CSIDataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, rank: int = 0, world_size: int = 1, limit: int | None = None,
                keep_all: bool = False) -> DataLoader:
    """A DataLoader over this rank's part of seeded global batches (see EpochBatchSampler); call
    `loader.batch_sampler.set_epoch(epoch)` before each epoch. `limit` keeps the first items only;
    `keep_all` (evaluation) never drops a trailing batch."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, shuffle, rank, world_size, limit, keep_all)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_batched, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)
