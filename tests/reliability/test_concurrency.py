"""Processes that start together: run directories never shared, one image cache built once."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import numpy as np

from src.config.schema import DataConfig
from src.data.cache import CacheSettings, build_cache, cache_key
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
    queue.put((cache.hit, np.array(cache.images), cache.failures))


def test_runs_started_together_get_distinct_directories(tmp_path):
    runs = _in_processes(_create_run_dir, (tmp_path / "models",), 4)
    runs += [create_run_dir(tmp_path / "models", "custom_cnn", "run") for _ in range(2)]
    assert len(set(runs)) == 6
    assert sorted(tmp_path.joinpath("models").iterdir()) == sorted(runs)
    assert all(list(run.iterdir()) == [run / "logs"] for run in runs)  # each one fresh and empty


def test_two_processes_building_one_cache_decode_once_and_agree(tmp_path):
    scores = np.random.default_rng(0).integers(0, 4, (24, 6))
    labels = write_png_dataset(tmp_path / "data", scores)
    paths = sorted((labels.parent / "images").glob("*.png"))
    reference = build_cache(paths, SETTINGS, tmp_path / "reference", workers=1)

    cache_dir = tmp_path / "cache"
    results = _in_processes(_build_cache, (paths, cache_dir), 2)
    assert sorted(hit for hit, _, _ in results) == [False, True]  # one decoded, the other waited and read
    for _, images, failures in results:
        np.testing.assert_array_equal(images, reference.images)
        assert failures == {}
    key = cache_key(paths, SETTINGS)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(f"{key}.{ext}" for ext in ("json", "lock", "npy"))


def test_a_killed_builders_partial_array_is_removed(tmp_path):
    labels = write_png_dataset(tmp_path / "data", np.zeros((3, 6), int))
    paths = sorted((labels.parent / "images").glob("*.png"))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    stale = cache_dir / f"{cache_key(paths, SETTINGS)}.npy.4242.partial"
    stale.write_bytes(b"\x93NUMPY half")
    cache = build_cache(paths, SETTINGS, cache_dir, workers=1)
    assert not cache.hit and not stale.exists() and cache.images.shape == (3, 32, 32)
