"""What identifies a cache entry: its file (path, size, mtime) within a store of one CacheSettings.

A store's settings are any frozen dataclass with digest(), entry_shape(), entry_bytes() and dtype:
the store, its shards and its reader know nothing else of them (the frozen-backbone feature cache of
src/training/feature_cache.py has its own).

The settings, the decoder's name among them, choose the store; (path, size, mtime) chooses the
entry in it. Decoders are module-level functions registered by name, so pool workers (spawned)
find them by import and a new kind of entry (e.g. lung masks) is one more `register_decoder`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from src.config.schema import DataConfig
from src.data.preprocess import preprocess_image
from src.data.readers import read_image
from src.utils.errors import DataError

CACHE_FORMAT_VERSION = 2
KEY_DTYPE = "S32"  # hex of the first 16 bytes of a SHA-256

# path, settings -> (stored pixels [size, size] | None, (height, width) before resizing | None, why it failed)
Decoded = tuple[np.ndarray | None, tuple[int, int] | None, str]
DECODERS: dict[str, Callable[[Path, CacheSettings], Decoded]] = {}


@dataclass(frozen=True)
class CacheSettings:
    """Everything that changes the cached pixels, and the decoder that makes them."""

    image_size: int
    resize_mode: str
    clip_low_percentile: float
    clip_high_percentile: float
    dtype: str
    volume_slice: str = "error"
    volume_index: int = 0
    decoder: str = "image"

    @classmethod
    def from_config(cls, data: DataConfig) -> CacheSettings:
        return cls(data.image_size, data.resize_mode, data.clip_low_percentile,
                   data.clip_high_percentile, data.cache_dtype, data.volume_slice, data.volume_index)

    def digest(self) -> str:
        """Names this settings' store: equal settings, equal stores, across processes and runs."""
        text = json.dumps([CACHE_FORMAT_VERSION, asdict(self)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def entry_shape(self) -> tuple[int, ...]:
        """The shape of one stored entry: an image's [size, size]."""
        return self.image_size, self.image_size

    def entry_bytes(self) -> int:
        return self.image_size * self.image_size * np.dtype(self.dtype).itemsize


def register_decoder(name: str) -> Callable:
    """Decorator: make `function(path, settings) -> Decoded` the decoder of settings.decoder == name."""
    def register(function: Callable[[Path, CacheSettings], Decoded]) -> Callable[[Path, CacheSettings], Decoded]:
        DECODERS[name] = function
        return function
    return register


def decoder_of(settings: CacheSettings) -> Callable[[Path, CacheSettings], Decoded]:
    if settings.decoder not in DECODERS:
        raise ValueError(f"no cache decoder {settings.decoder!r}; registered: {', '.join(sorted(DECODERS))}")
    return DECODERS[settings.decoder]


@register_decoder("image")
def decode_image(path: Path, settings: CacheSettings) -> Decoded:
    """An X-ray file -> its preprocessed pixels; an unreadable file -> the reason, not an exception."""
    try:
        image = read_image(path, settings.volume_slice, settings.volume_index)
    except DataError as exc:
        return None, None, str(exc)
    stored = preprocess_image(image, settings.image_size, settings.resize_mode,
                              settings.clip_low_percentile, settings.clip_high_percentile, settings.dtype)
    return stored, (int(image.shape[0]), int(image.shape[1])), ""


def entry_keys(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """KEY_DTYPE key of each file from its absolute path, size and mtime (a file that cannot be
    stat'ed gets a key of its own, and its decoder says why it fails)."""
    keys = np.empty(len(paths), dtype=KEY_DTYPE)
    for start in range(0, len(paths), 4096):  # in slices: the hex strings of a slice only are alive at once
        keys[start:start + 4096] = [_entry_key(path) for path in paths[start:start + 4096]]
    return keys


def _entry_key(path: str | os.PathLike) -> str:
    name = os.fspath(path)
    if not name.startswith(os.sep):  # located files are absolute already: abspath would cost more than stat
        name = os.path.abspath(name)
    try:
        stat = os.stat(name)
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    return hashlib.sha256(f"{name}\0{size}\0{mtime}".encode()).hexdigest()[:32]
