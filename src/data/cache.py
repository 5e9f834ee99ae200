"""Decode every image once into a memory-mapped array reused across epochs, runs and trials.

The cache is keyed by the file list (paths, sizes, mtimes) and the preprocessing settings, so a
changed file or setting makes a new cache and an unchanged one is found again.

Processes that need the same cache at once (hyperopt workers, two trainings) take turns on a lock
file per key: one decodes, the others wait and then read its result. A cache is complete once its
manifest exists (written after the array is renamed into place), so no reader sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from src.config.schema import DataConfig
from src.data.preprocess import preprocess_image
from src.data.readers import read_image
from src.utils.errors import DataError
from src.utils.io import atomic_write_text, require_free_space

CACHE_FORMAT_VERSION = 1
# Below this many images, starting a process pool (about 3 s) costs more than it saves.
_POOL_THRESHOLD = 64


@dataclass(frozen=True)
class CacheSettings:
    """Everything that changes the cached pixels."""

    image_size: int
    resize_mode: str
    clip_low_percentile: float
    clip_high_percentile: float
    dtype: str
    volume_slice: str = "error"
    volume_index: int = 0

    @classmethod
    def from_config(cls, data: DataConfig) -> CacheSettings:
        return cls(data.image_size, data.resize_mode, data.clip_low_percentile,
                   data.clip_high_percentile, data.cache_dtype, data.volume_slice, data.volume_index)


@dataclass
class ImageCache:
    images: np.ndarray  # read-only memmap [N, size, size] of uint8/uint16
    failures: dict[int, str]  # index into the file list -> why it could not be decoded
    original_shapes: list[tuple[int, int] | None]
    path: Path
    hit: bool  # True when an existing cache was reused


def cache_key(paths: Sequence[Path], settings: CacheSettings) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT_VERSION, asdict(settings)]).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode(path: Path, settings: CacheSettings) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
    try:
        image = read_image(path, settings.volume_slice, settings.volume_index)
    except DataError as exc:
        return None, None, str(exc)
    stored = preprocess_image(image, settings.image_size, settings.resize_mode,
                              settings.clip_low_percentile, settings.clip_high_percentile, settings.dtype)
    return stored, (int(image.shape[0]), int(image.shape[1])), ""


def _load(npy: Path, manifest: Path) -> ImageCache:
    meta = json.loads(manifest.read_text())
    return ImageCache(
        images=np.load(npy, mmap_mode="r"),
        failures={int(k): v for k, v in meta["failures"].items()},
        original_shapes=[tuple(s) if s else None for s in meta["shapes"]],
        path=npy,
        hit=True,
    )


def build_cache(paths: Sequence[Path], settings: CacheSettings, cache_dir: str | Path,
                workers: int | None = None) -> ImageCache:
    """Return the cache of `paths`, decoding (in parallel, with a progress bar) only when absent."""
    cache_dir = Path(cache_dir)
    key = cache_key(paths, settings)
    npy, manifest = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and manifest.is_file():
        return _load(npy, manifest)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f"{key}.lock"):
        if npy.is_file() and manifest.is_file():  # another process built it while this one waited
            return _load(npy, manifest)
        for stale in cache_dir.glob(f"{key}.npy.*.partial"):  # left by a builder that was killed
            stale.unlink(missing_ok=True)
        return _decode_all(paths, settings, npy, manifest, workers)


def _decode_all(paths: Sequence[Path], settings: CacheSettings, npy: Path, manifest: Path,
                workers: int | None) -> ImageCache:
    size = settings.image_size
    # A memory map on a full disk fails with SIGBUS at the first page it cannot store, not with an
    # error: refuse before writing.
    require_free_space(npy.parent, len(paths) * size * size * np.dtype(settings.dtype).itemsize,
                       f"the image cache {npy.name}")
    partial_npy = npy.with_name(f"{npy.name}.{os.getpid()}.partial")
    images = np.lib.format.open_memmap(partial_npy, mode="w+", dtype=np.dtype(settings.dtype),
                                       shape=(len(paths), size, size))
    failures: dict[int, str] = {}
    shapes: list[tuple[int, int] | None] = []
    decode = partial(_decode, settings=settings)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(paths), desc="Decoding images into the cache", unit="img", leave=False)
    try:
        if workers > 1 and len(paths) >= _POOL_THRESHOLD:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.imap(decode, paths, chunksize=max(1, len(paths) // (workers * 8)))
                _collect(results, images, failures, shapes, bar)
        else:
            _collect(map(decode, paths), images, failures, shapes, bar)
        images.flush()
        del images
        os.replace(partial_npy, npy)
    finally:
        bar.close()
        partial_npy.unlink(missing_ok=True)
    atomic_write_text(manifest, json.dumps({
        "version": CACHE_FORMAT_VERSION,
        "settings": asdict(settings),
        "files": [str(p) for p in paths],
        "failures": failures,
        "shapes": shapes,
    }))
    cache = _load(npy, manifest)
    cache.hit = False
    return cache


def _collect(results, images: np.ndarray, failures: dict[int, str],
             shapes: list[tuple[int, int] | None], bar: tqdm) -> None:
    for index, (stored, shape, error) in enumerate(results):
        if stored is None:
            failures[index] = error
        else:
            images[index] = stored
        shapes.append(shape)
        bar.update()
