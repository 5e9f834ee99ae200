"""torch Dataset over the decoded-image cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.masks import ZoneMaps, one_hot_zones
from src.data.preprocess import from_storage
from src.data.sampler import EpochBatchSampler


class CSIDataset(Dataset):
    """Items are (input FloatTensor[C, H, W], labels LongTensor[6], FileID).

    Images come from the cache (`images`, [N, H, W] uint8/uint16): item i is cache row
    `cache_rows[i]` with `labels[i]` and `file_ids[i]`. Nothing is decoded here. The input's first
    channel is the normalised image; with `zones` (zone maps by cache row, src/data/masks.py) six more
    follow, zone ZONES[k]'s 0/1 mask in channel k + 1 (see src/models/factory.py).
    """

    def __init__(self, images: np.ndarray, cache_rows: Sequence[int], labels: np.ndarray,
                 file_ids: Sequence[str], mean: float, std: float, zones: ZoneMaps | None = None) -> None:
        self.images, self.zones = images, zones
        self.cache_rows = np.asarray(cache_rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.file_ids = list(file_ids)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return self._inputs(self.cache_rows[[item]])[0], self.labels[item], self.file_ids[item]

    def _inputs(self, rows: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(from_storage(np.asarray(self.images[rows])))
        images = ((pixels - self.mean) / self.std).unsqueeze(1)
        if self.zones is None:
            return images
        return torch.cat([images, torch.from_numpy(one_hot_zones(self.zones[rows]))], dim=1)

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """A whole batch, as collated: the DataLoader calls this instead of __getitem__ per item.

        One gather from the cache and one normalisation per batch, instead of per image plus a collate, keeps
        the loop's wait for the next batch a small part of a step. The values equal the stacked items.
        """
        return self._inputs(self.cache_rows[items]), self.labels[items], [self.file_ids[i] for i in items]


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
