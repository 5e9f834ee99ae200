"""The files of one store: shards of decoded images, each with a manifest and a lock, the index, and
a lock per machine that decodes into it.

A shard is `<name>.npy` ([n, size, size] images) plus `<name>.json` (version, settings, the key,
original shape and any failure of each slot). The manifest is renamed into place after the array,
so a shard is complete exactly when its manifest exists, and a complete shard is never rewritten.
Temporaries start with `.<name>.`; they are a killed writer's when the shard's lock is free.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from src.data.cache.keys import CACHE_FORMAT_VERSION, KEY_DTYPE, CacheSettings, Decoded
from src.utils.errors import DataError
from src.utils.io import atomic_write_text, require_free_space
from src.utils.logging import logger


def store_dir(cache_dir: str | Path, settings: CacheSettings) -> Path:
    return Path(cache_dir) / f"v{CACHE_FORMAT_VERSION}-{settings.digest()}"


def shard_name(keys: np.ndarray) -> str:
    """A shard is named by the keys it holds: two shards of one name hold the same entries."""
    return hashlib.sha256(keys.tobytes()).hexdigest()[:24]


def shard_lock(store: Path, name: str) -> FileLock:
    # fcntl/flock locks, which Linux's NFS client also takes on the server: safe on shared filesystems.
    return FileLock(store / f"{name}.lock")


def machine_lock(store: Path) -> FileLock:
    """Held by the one process of this machine decoding into `store` (see build.py)."""
    return FileLock(store / f"machine-{socket.gethostname()}.lock")


def is_complete(store: Path, name: str) -> bool:
    return (store / f"{name}.json").is_file()


@dataclass
class Index:
    """Every entry of the complete shards, sorted by key: entry e is slot slots[e] of names[shards[e]]."""

    keys: np.ndarray  # [M] KEY_DTYPE, sorted
    shards: np.ndarray  # [M] int32 into names
    slots: np.ndarray  # [M] int32
    shapes: np.ndarray  # [M, 2] int32 height, width before resizing; 0, 0 for a failure
    failures: dict[int, str]  # entry -> why its file could not be decoded
    names: list[str]

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Entry of each key, -1 where the store has none."""
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = (at < len(self.keys)) & (self.keys[at] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        return np.where(found, at, -1)


@functools.cache
def _manifest(path: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]] | None:
    """Keys, shapes and failures (by slot) of a complete shard, None for another format's. Read once
    per process: a complete shard never changes."""
    meta = json.loads(Path(path).read_text())
    if meta.get("version") != CACHE_FORMAT_VERSION:
        return None
    return (np.array(meta["keys"], dtype=KEY_DTYPE), np.array(meta["shapes"], dtype=np.int32).reshape(-1, 2),
            {int(slot): why for slot, why in meta["failures"].items()})


def read_index(store: Path) -> Index:
    names, keys, shapes, failures, offset = [], [], [], {}, 0
    for manifest in sorted(store.glob("*.json")):
        shard = _manifest(str(manifest))
        if shard is None:
            continue
        names.append(manifest.stem)
        keys.append(shard[0])
        shapes.append(shard[1])
        failures.update({offset + slot: why for slot, why in shard[2].items()})
        offset += len(shard[0])
    if not names:
        return Index(np.empty(0, KEY_DTYPE), np.empty(0, np.int32), np.empty(0, np.int32),
                     np.empty((0, 2), np.int32), {}, [])
    sizes = [len(k) for k in keys]
    all_keys = np.concatenate(keys)
    order = np.argsort(all_keys, kind="stable")
    shards = np.repeat(np.arange(len(names), dtype=np.int32), sizes)
    slots = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return Index(all_keys[order], shards[order], slots[order], np.concatenate(shapes)[order],
                 {int(rank[e]): why for e, why in failures.items()}, names)


def write_shard(store: Path, name: str, keys: np.ndarray, settings: CacheSettings,
                decoded: Iterable[Decoded], bar: tqdm) -> None:
    """Write the shard of `keys` from their decoded entries, in order; complete once this returns."""
    # A memory map on a full disk fails with SIGBUS at the first page it cannot store: refuse first.
    require_free_space(store, len(keys) * settings.entry_bytes(), f"the cache shard {store / name}")
    partial = store / f".{name}.npy.{os.getpid()}.partial"
    images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.dtype(settings.dtype),
                                       shape=(len(keys), *settings.entry_shape()))
    shapes, failures = np.zeros((len(keys), 2), dtype=np.int32), {}
    try:
        for slot, (stored, shape, error) in enumerate(decoded):
            if stored is None:
                failures[slot] = error
            else:
                images[slot], shapes[slot] = stored, shape
            bar.update()
        images.flush()
        del images  # unmapped: what this shard used of resident memory is released
        os.replace(partial, store / f"{name}.npy")
    finally:
        partial.unlink(missing_ok=True)
    atomic_write_text(store / f"{name}.json", json.dumps({
        "version": CACHE_FORMAT_VERSION, "settings": asdict(settings),
        "keys": [k.decode() for k in keys], "shapes": shapes.tolist(), "failures": failures}))


def remove_abandoned(store: Path) -> None:
    """Delete the temporaries of writers that were killed: those whose shard nobody holds."""
    for leftover in store.glob(".*"):
        lock = shard_lock(store, leftover.name[1:].split(".")[0])
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # being written now
        try:
            leftover.unlink(missing_ok=True)
        finally:
            lock.release()


def remove_old_format(cache_dir: Path) -> None:
    """Delete caches of format version 1 (one array per whole file list, `<key>.npy/.json/.lock`
    in cache_dir itself): this format never reads them, and they can be as large as the data set."""
    for manifest in cache_dir.glob("*.json"):
        try:
            version = json.loads(manifest.read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            continue
        if version != 1:
            continue
        key = manifest.stem
        freed = sum(p.stat().st_size for p in cache_dir.glob(f"{key}.*") if p.is_file())
        for old in [manifest, cache_dir / f"{key}.npy", *cache_dir.glob(f"{key}.npy.*.partial")]:
            old.unlink(missing_ok=True)
        (cache_dir / f"{key}.lock").unlink(missing_ok=True)
        logger.info(f"{cache_dir}: removed the old-format image cache {key} ({freed / 2**20:.0f} MiB); "
                    "its images are decoded again into the new format")


def check_readable(store: Path, index: Index, keys: np.ndarray) -> np.ndarray:
    """Entry of each key; DataError when one is missing (a shard deleted while this process ran)."""
    entries = index.find(keys)
    if (entries < 0).any():
        raise DataError(f"{store}: {int((entries < 0).sum())} image(s) are missing from the cache after "
                        "building it (was it deleted meanwhile?); run again")
    return entries
