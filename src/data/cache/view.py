"""The cache as callers see it: one [N, size, size] array over a file list, read from the shards."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.cache.keys import CacheSettings
from src.data.cache.store import Index
from src.utils.errors import DataError

# Shard files kept open at once, the least recently used closed first.
OPEN_FILES = 64


class ShardedImages:
    """Read-only, index-addressable like a numpy array: row i is slot slots[i] of shard names[shards[i]].

    Rows may be an int, a slice or an array of ints (a batch). Each image is read from its shard's
    .npy file straight into the result (pread) rather than through a memory map, whose pages would
    count as resident: reading every image of an epoch leaves resident memory as it was, however
    large the cache. A pickled copy (a DataLoader worker) opens its own files.
    """

    def __init__(self, store: Path, names: list[str], shards: np.ndarray, slots: np.ndarray,
                 settings: CacheSettings) -> None:
        self.store, self.names, self.shards, self.slots = store, names, shards, slots
        self.dtype = np.dtype(settings.dtype)
        self.shape = (len(shards), *settings.entry_shape())
        self.ndim, self.nbytes, self.image_bytes = len(self.shape), len(shards) * settings.entry_bytes(), \
            settings.entry_bytes()
        self._open: OrderedDict[int, io.FileIO] = OrderedDict()
        self._data_at: dict[int, int] = {}  # shard -> offset of its first image (after the .npy header)

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self, shard: int) -> tuple[int, int]:
        """File descriptor of `shard`'s .npy and the offset of its data."""
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            file = self.store / f"{self.names[shard]}.npy"
            if shard not in self._data_at:  # numpy parses the header (any .npy version); no pixel is read
                self._data_at[shard] = np.load(file, mmap_mode="r").offset
            self._open[shard] = io.FileIO(file, "r")
            if len(self._open) > OPEN_FILES:
                self._open.popitem(last=False)[1].close()
        return self._open[shard].fileno(), self._data_at[shard]

    def _read(self, row: int, into: np.ndarray) -> None:
        fd, data_at = self._file(int(self.shards[row]))
        if os.preadv(fd, [into], data_at + int(self.slots[row]) * self.image_bytes) != self.image_bytes:
            raise DataError(f"{self.store / self.names[self.shards[row]]}.npy: cache shard is truncated; "
                            "delete it to have it decoded again")

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        elif np.ndim(rows) == 0:
            image = np.empty(self.shape[1:], dtype=self.dtype)
            self._read(int(rows), image)
            return image
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for i, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            self._read(row, out[i])
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
