"""torch Dataset over the decoded-image cache: batches leave it as the cache stores them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.config.schema import TrainingConfig
from src.data.masks import ZoneMaps
from src.data.sampler import EpochBatchSampler

# [Training] num_workers = auto on a GPU: loader processes per training process. A batch is a gather of
# stored rows from the cache's shard files, nothing is decoded: on one core of the (shared) 2-core
# development machine 128 images of 224 px took 12-27 ms, and their zone maps (lung masks) about 160 ms
# more, while a GPU training 3,000 img/s takes a batch of 128 every 43 ms. Four workers keep up with zone
# maps and idle most of the time on images alone; fewer where a node's cores are shared by many ranks.
WORKERS_PER_GPU = 4


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


def loader_workers(setting: str, device: torch.device) -> int:
    """[Training] num_workers: a count as given; auto: 0 on a CPU, where the step needs every core and
    a batch gathered from the cache costs a small part of it, else WORKERS_PER_GPU, at most this
    process's share of the cores (torchrun's LOCAL_WORLD_SIZE processes a node) less one for itself."""
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(WORKERS_PER_GPU, share - 1))


def loader_options(training: TrainingConfig, device: torch.device) -> dict[str, int | bool]:
    """make_loader's num_workers and pin_memory for [Training] num_workers and pin_memory on `device`
    (pinned memory serves copies to a GPU only)."""
    return {"num_workers": loader_workers(training.num_workers, device),
            "pin_memory": training.pin_memory and device.type == "cuda"}


def make_loader(dataset: CSIDataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, rank: int = 0, world_size: int = 1, limit: int | None = None,
                keep_all: bool = False) -> DataLoader:
    """A DataLoader over this rank's part of seeded global batches (see EpochBatchSampler); call
    `loader.batch_sampler.set_epoch(epoch)` before each epoch. `limit` keeps the first items only;
    `keep_all` (evaluation) never drops a trailing batch. Workers persist across epochs.

    The loader draws its workers' seeds from a generator of its own: from torch's global one (which
    dropout draws from) it would draw once per epoch without persistent workers and once per run with
    them, and a run's result would depend on num_workers. Loading itself draws no random number."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, shuffle, rank, world_size, limit, keep_all)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_batched, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))
