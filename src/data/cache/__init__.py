"""Decode every image once into memory-mapped shards reused across epochs, runs, trials and lists.

Invariants:
- An entry is keyed by its file's absolute path, size and mtime within the store of its
  CacheSettings (pixel settings and decoder): a changed file or setting is a new entry, an
  unchanged one is found again whatever list it comes in. A labels file with k new images decodes
  k; one with fewer decodes nothing.
- A shard is complete once its manifest exists and is never rewritten; readers see only complete
  shards. A killed build leaves its finished shards, and a rerun decodes only the rest.
- Processes building one store at once (DDP ranks, hyperopt workers, sweep agents, N jobs on a
  shared filesystem) plan the same shards and each takes those whose lock it gets: every image is
  decoded once between them (see build.py). On one machine they decode in turn: the first to find
  work decodes it with a pool of the machine's cores, the others wait for it and find nothing left,
  so N ranks of a node never start N pools of all its cores.
- Shards are .npy arrays, written through a memory map; reading copies each image straight from
  its file (pread), so resident memory does not grow with N however many images an epoch reads.
- Caches of an older format are removed, and their images decoded again into this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src.data.cache.build import fill_store
from src.data.cache.keys import CACHE_FORMAT_VERSION, CacheSettings, entry_keys, register_decoder
from src.data.cache.store import check_readable, read_index, remove_abandoned, remove_old_format, store_dir
from src.data.cache.view import ImageCache, ShardedImages

__all__ = ["CACHE_FORMAT_VERSION", "CacheSettings", "ImageCache", "ShardedImages", "build_cache",
           "prebuild_part", "register_decoder"]


def _prepare(cache_dir: str | Path, settings: CacheSettings) -> Path:
    store = store_dir(cache_dir, settings)
    store.mkdir(parents=True, exist_ok=True)
    remove_old_format(Path(cache_dir))
    remove_abandoned(store)
    return store


def build_cache(paths: Sequence[Path], settings: CacheSettings, cache_dir: str | Path,
                workers: int | None = None) -> ImageCache:
    """The cache of `paths`, decoding (in parallel, with a progress bar) only the images it lacks."""
    store = _prepare(cache_dir, settings)
    keys = entry_keys(paths)
    decoded = fill_store(store, paths, keys, settings, workers)
    index = read_index(store)
    return ImageCache.over(store, index, check_readable(store, index, keys), settings, decoded)


def prebuild_part(paths: Sequence[Path], settings: CacheSettings, cache_dir: str | Path, part: int, parts: int,
                  workers: int | None = None) -> tuple[int, int]:
    """Decode part `part` (0-based) of `parts` of what the cache of `paths` lacks: N jobs given the
    same list fill disjoint parts. Returns (images this call decoded, images still missing overall)."""
    store = _prepare(cache_dir, settings)
    keys = entry_keys(paths)
    decoded = fill_store(store, paths, keys, settings, workers, part=(part, parts))
    return decoded, int((read_index(store).find(keys) < 0).sum())
