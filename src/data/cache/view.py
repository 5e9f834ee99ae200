"""The cache as callers see it: one [N, size, size] array over a file list, read from the shards."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.cache.keys import CacheSettings
from src.data.cache.store import Index

# Shards mapped at once. Pages read through a map count as resident until it is closed, so a few
# open maps keep reading O(1) in memory however many shards there are.
OPEN_SHARDS = 8


class ShardedImages:
    """Read-only, index-addressable like a numpy array: row i is slot slots[i] of shard names[shards[i]].

    Rows may be an int or an array of ints (a batch). Shards are memory-mapped on first use, at most
    OPEN_SHARDS at a time; a pickled copy (a DataLoader worker) maps its own.
    """

    def __init__(self, store: Path, names: list[str], shards: np.ndarray, slots: np.ndarray,
                 settings: CacheSettings) -> None:
        self.store, self.names, self.shards, self.slots = store, names, shards, slots
        self.dtype = np.dtype(settings.dtype)
        self.shape = (len(shards), settings.image_size, settings.image_size)
        self.ndim, self.nbytes = 3, len(shards) * settings.image_bytes()
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, shard: int) -> np.ndarray:
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            if len(self._open) >= OPEN_SHARDS:
                self._open.popitem(last=False)
            self._open[shard] = np.load(self.store / f"{self.names[shard]}.npy", mmap_mode="r")
        return self._open[shard]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        elif np.ndim(rows) == 0:
            row = int(rows)
            return np.array(self._shard(int(self.shards[row]))[self.slots[row]])
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shards = self.shards[rows]
        for shard in np.unique(shards):
            picked = np.flatnonzero(shards == shard)
            out[picked] = self._shard(int(shard))[self.slots[rows[picked]]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[np.arange(len(self))]
        return images if dtype is None else images.astype(dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}


@dataclass
class ImageCache:
    images: ShardedImages  # [N, size, size] of uint8/uint16, row i = file i of the list
    failures: dict[int, str]  # index into the file list -> why it could not be decoded
    original_shapes: np.ndarray  # [N, 2] height, width before resizing; 0, 0 where decoding failed
    path: Path  # the store: cache_dir/v<format>-<settings digest>
    decoded: int  # images this call decoded; the others were in the cache already

    @property
    def hit(self) -> bool:
        """True when every image was found in the cache."""
        return self.decoded == 0

    @classmethod
    def over(cls, store: Path, index: Index, entries: np.ndarray, settings: CacheSettings,
             decoded: int) -> ImageCache:
        """The view of the files whose index entries are `entries`."""
        images = ShardedImages(store, index.names, index.shards[entries], index.slots[entries], settings)
        failed = np.flatnonzero(np.isin(entries, np.fromiter(index.failures, dtype=np.int64)))
        failures = {int(row): index.failures[int(entries[row])] for row in failed}
        return cls(images, failures, index.shapes[entries], store, decoded)
