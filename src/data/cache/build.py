"""Decode what a store lacks, shard by shard, sharing the shards among every process that builds it.

The file list is cut into chunks of `shard_images` rows; each chunk's entries the store lacks make
one shard. Every process given the same list and store plans the same shards, and takes each
shard whose lock it gets at once; once through, it waits on the others' locks (a killed owner's
lock frees itself) and writes any shard still incomplete. So N processes (DDP ranks, hyperopt
workers, sweep agents) decode each image once between them, and a rerun after a kill decodes
only the shards that were not finished. `part=(K, N)` takes chunks K, K + N, ... only: N jobs
given the same list prebuild disjoint parts.

The processes of one machine take turns (its machine lock in the store): one decodes, with a pool
of every core when worthwhile, while the others wait and then plan again, finding what it decoded.
Eight ranks of a node thus start one pool of its cores, not eight; machines sharing the store over a
network filesystem still share its shards out.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from filelock import Timeout
from tqdm import tqdm

from src.data.cache.keys import CacheSettings, Decoded, decoder_of
from src.data.cache.store import Index, is_complete, machine_lock, read_index, shard_lock, shard_name, write_shard
from src.utils.logging import logger

SHARD_BYTES = 64 * 2**20
MAX_SHARD_IMAGES = 1024
MIN_SHARD_IMAGES = 16
# Starting a spawned pool costs seconds (each worker imports numpy, Pillow, pydicom): worth it only
# when decoding here would take several times that.
POOL_WORTHWHILE_SECONDS = 10.0


def shard_images(count: int, settings: CacheSettings) -> int:
    """Images per shard for a list of `count` files: about 64 shards a list, so a kill loses little
    and many processes find work, within 16..1024 images and 64 MiB."""
    wanted = max(MIN_SHARD_IMAGES, -(-count // 64))
    return max(1, min(MAX_SHARD_IMAGES, SHARD_BYTES // settings.entry_bytes(), wanted))


@dataclass(frozen=True)
class Shard:
    chunk: int  # which chunk of the file list it comes from
    name: str
    rows: np.ndarray  # rows of the file list whose images it holds


def plan_shards(keys: np.ndarray, index: Index, settings: CacheSettings) -> list[Shard]:
    """The shards that would complete the store for `keys`: per chunk of the list, the first
    occurrence of each key the store lacks."""
    _, first = np.unique(keys, return_index=True)
    unique_rows = np.sort(first)
    missing = unique_rows[index.find(keys[unique_rows]) < 0]
    per_shard = shard_images(len(keys), settings)
    groups = np.split(missing, np.flatnonzero(np.diff(missing // per_shard)) + 1) if len(missing) else []
    return [Shard(int(g[0] // per_shard), shard_name(keys[g]), g) for g in groups]


class _Decoder:
    """Decodes in a pool of `workers` processes when given, else (workers None) in this process until
    what is left would take long enough to start a pool of one per core for."""

    def __init__(self, settings: CacheSettings, workers: int | None, total: int, stack: ExitStack) -> None:
        self.decode = partial(decoder_of(settings), settings=settings)
        self.workers, self.chosen = workers or os.cpu_count() or 1, workers is not None
        self.left, self.stack = total, stack
        self.pool, self.serial_seconds, self.serial_count = None, 0.0, 0

    def _pool_worthwhile(self) -> bool:
        if self.workers < 2 or self.chosen:
            return self.workers > 1
        return self.serial_count >= 4 and self.left * self.serial_seconds / self.serial_count > POOL_WORTHWHILE_SECONDS

    def __call__(self, files: Sequence[Path]) -> Iterator[Decoded]:
        for i, file in enumerate(files):
            if self.pool is None and self._pool_worthwhile():
                self.pool = self.stack.enter_context(multiprocessing.get_context("spawn").Pool(self.workers))
            if self.pool is not None:
                rest = files[i:]
                self.left -= len(rest)
                yield from self.pool.imap(self.decode, rest, chunksize=max(1, len(rest) // (self.workers * 4)))
                return
            started = time.perf_counter()
            yield self.decode(file)
            self.serial_seconds += time.perf_counter() - started
            self.serial_count, self.left = self.serial_count + 1, self.left - 1


def _wait_for_turn(store: Path, stack: ExitStack) -> bool:
    """Hold this machine's lock on `store` until `stack` closes; whether another process had it first."""
    lock = machine_lock(store)
    try:
        lock.acquire(timeout=0)
        waited = False
    except Timeout:
        logger.info(f"{store}: another process on this machine is decoding images into this cache; waiting for it")
        lock.acquire()
        waited = True
    stack.callback(lock.release)
    return waited


def write_shards(store: Path, plan: Sequence[Shard], keys: np.ndarray, settings: CacheSettings,
                 produce: Callable[[np.ndarray], Iterator[Decoded]], bar: tqdm) -> int:
    """Write the planned shards this process gets the lock of, then wait for the others' and write any
    still incomplete: `produce(rows)` gives the entries of those rows of the list, in order. How many
    entries this process produced."""
    produced, waiting = 0, []

    def write_held(shard: Shard, lock) -> int:
        try:
            if is_complete(store, shard.name):  # finished by another process since the plan
                return 0
            write_shard(store, shard.name, keys[shard.rows], settings, produce(shard.rows), bar)
            return len(shard.rows)
        finally:
            lock.release()

    for shard in plan:
        lock = shard_lock(store, shard.name)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another process is writing it: come back once through
            waiting.append((shard, lock))
            continue
        produced += write_held(shard, lock)
    for shard, lock in waiting:
        lock.acquire()
        produced += write_held(shard, lock)
    return produced


def fill_store(store: Path, paths: Sequence[Path], keys: np.ndarray, settings: CacheSettings,
               workers: int | None = None, part: tuple[int, int] | None = None) -> int:
    """Write the shards `paths` (with entry `keys`) need, or only part K of N; how many images this
    process decoded."""
    def planned() -> list[Shard]:
        plan = plan_shards(keys, read_index(store), settings)
        return plan if part is None else [shard for shard in plan if shard.chunk % part[1] == part[0]]

    plan = planned()
    if not plan:
        return 0
    with ExitStack() as stack:
        if _wait_for_turn(store, stack):  # another process of this machine decoded meanwhile
            plan = planned()
            if not plan:
                return 0
        total = sum(len(shard.rows) for shard in plan)
        bar = stack.enter_context(tqdm(total=total, desc="Decoding images into the cache", unit="img", leave=False))
        decode = _Decoder(settings, workers, total, stack)
        return write_shards(store, plan, keys, settings, lambda rows: decode([Path(paths[r]) for r in rows]), bar)
