"""Processes that start together: run directories never shared, one image cache built once between them."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import numpy as np

from src.config.schema import DataConfig
from src.data.cache import CacheSettings, build_cache
from src.data.cache.store import machine_lock
from src.utils.run_dir import create_run_dir
from tests.conftest import write_png_dataset

SETTINGS = dataclasses.replace(CacheSettings.from_config(DataConfig()), image_size=32)


def _in_processes(target, args: tuple, n: int) -> list:
    """Run target(barrier, queue, *args) in n fresh processes released at the same instant."""
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(n), context.Queue()
    procs = [context.Process(target=target, args=(barrier, queue, *args)) for _ in range(n)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return results


def _create_run_dir(barrier, queue, output_dir: Path) -> None:
    barrier.wait()
    queue.put(create_run_dir(output_dir, "custom_cnn", "run"))


def _build_cache(barrier, queue, paths: list[Path], cache_dir: Path) -> None:
    barrier.wait()
    cache = build_cache(paths, SETTINGS, cache_dir, workers=1)
    queue.put((cache.decoded, np.array(cache.images), cache.failures))


def test_runs_started_together_get_distinct_directories(tmp_path):
    runs = _in_processes(_create_run_dir, (tmp_path / "models",), 4)
    runs += [create_run_dir(tmp_path / "models", "custom_cnn", "run") for _ in range(2)]
    assert len(set(runs)) == 6
    assert sorted(tmp_path.joinpath("models").iterdir()) == sorted(runs)
    assert all(list(run.iterdir()) == [run / "logs"] for run in runs)  # each one fresh and empty


def test_two_processes_building_one_cache_decode_each_image_once_and_agree(tmp_path):
    scores = np.random.default_rng(0).integers(0, 4, (48, 6))
    labels = write_png_dataset(tmp_path / "data", scores, size=16)
    paths = sorted((labels.parent / "images").glob("*.png"))
    reference = build_cache(paths, SETTINGS, tmp_path / "reference", workers=1)

    cache_dir = tmp_path / "cache"
    results = _in_processes(_build_cache, (paths, cache_dir), 2)
    assert sum(decoded for decoded, _, _ in results) == len(paths)  # shards shared out, none decoded twice
    for _, images, failures in results:
        np.testing.assert_array_equal(images, reference.images)
        assert failures == {}
    store = next(cache_dir.iterdir())
    shards = sorted(p.stem for p in store.glob("*.json"))
    machine = Path(machine_lock(store).lock_file).name  # the lock of this machine's turn to decode
    assert len(shards) == 3 and sorted(p.name for p in store.iterdir()) == sorted(
        [f"{name}.{ext}" for name in shards for ext in ("json", "lock", "npy")] + [machine])
