"""The decoded-image cache and load_data: reuse, invalidation, no re-decoding, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config.loader import load_config
from src.data.cache import CacheSettings, build_cache
from src.data.dataset import make_loader
from src.data.load import load_data
from src.utils.errors import DataError
from tests.conftest import write_config, write_png_dataset

SETTINGS = CacheSettings(image_size=16, resize_mode="plain", clip_low_percentile=0.5,
                         clip_high_percentile=99.5, dtype="uint16")


def config_for(tmp_path: Path, data_root: Path, **data_keys):
    return load_config(write_config(tmp_path / "config" / "config.ini", data_root, Data=data_keys), env={})


def image_paths(root: Path) -> list[Path]:
    return sorted((root / "images").glob("*.png"))


def test_cache_is_reused_and_never_redecodes(tiny_dataset, tmp_path):
    paths = image_paths(tiny_dataset)
    first = build_cache(paths, SETTINGS, tmp_path / "cache")
    assert not first.hit and first.images.shape == (len(paths), 16, 16) and first.images.dtype == np.uint16
    original = np.array(first.images)
    # Overwrite every file with garbage of the same size and mtime: a re-decode would fail or differ.
    for path in paths:
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = build_cache(paths, SETTINGS, tmp_path / "cache")
    assert second.hit and second.path == first.path and not second.failures
    np.testing.assert_array_equal(second.images, original)


def test_changed_file_or_setting_decodes_again(tiny_dataset, tmp_path):
    paths = image_paths(tiny_dataset)
    first = build_cache(paths, SETTINGS, tmp_path / "cache")
    other_size = build_cache(paths, CacheSettings(**{**SETTINGS.__dict__, "image_size": 8}), tmp_path / "cache")
    assert other_size.decoded == len(paths) and other_size.path != first.path
    assert other_size.images.shape[1:] == (8, 8)
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = build_cache(paths, SETTINGS, tmp_path / "cache")
    assert touched.decoded == 1 and touched.path == first.path  # the one changed file, in the same store
    np.testing.assert_array_equal(touched.images, first.images)


def test_parallel_build_matches_serial(tmp_path):
    scores = np.random.default_rng(0).integers(0, 5, (70, 6))
    root = tmp_path / "many"
    write_png_dataset(root, scores, size=24)
    paths = image_paths(root)
    (paths[3]).write_bytes(b"not a png")
    parallel = build_cache(paths, SETTINGS, tmp_path / "parallel", workers=2)
    serial = build_cache(paths, SETTINGS, tmp_path / "serial", workers=1)
    np.testing.assert_array_equal(parallel.images, serial.images)
    assert set(parallel.failures) == set(serial.failures) == {3}
    assert not any((tmp_path / "parallel").rglob(".*"))  # no temporary left behind


def test_dataset_items(tiny_dataset, tmp_path):
    bundle = load_data(config_for(tmp_path, tiny_dataset))
    train = bundle.dataset("train")
    (image, zones), labels, file_id = train[0]
    # As the cache stores it: not normalised, no mask channels without [Data] mask_dir.
    assert image.shape == (32, 32) and image.dtype == torch.uint16 and zones is None
    np.testing.assert_array_equal(image.numpy(), bundle.cache.images[train.cache_rows[0]])
    assert labels.dtype == torch.long and labels.shape == (6,)
    row = bundle.table.set_index("FileID").loc[file_id]
    assert labels.tolist() == [int(row[z]) for z in ("right_sup", "left_sup", "right_mid", "left_mid",
                                                       "right_inf", "left_inf")]
    assert sum(len(bundle.dataset(s)) for s in ("train", "val", "test")) == 24
    # Patient-grouped: both images of a patient land in the same split.
    assert (bundle.table.groupby("PatientID")["split"].nunique() == 1).all()


def test_loader_batches_are_the_stacked_items(tiny_dataset, tmp_path):
    bundle = load_data(config_for(tmp_path, tiny_dataset))
    train = bundle.dataset("train")
    loader = make_loader(train, batch_size=4, shuffle=True, seed=3)
    loader.batch_sampler.set_epoch(1)
    for order, ((images, zones), labels, file_ids) in zip(loader.batch_sampler, loader):
        items = [train[i] for i in order]
        assert zones is None and torch.equal(images, torch.stack([item[0].images for item in items]))
        assert torch.equal(labels, torch.stack([item[1] for item in items]))
        assert file_ids == [item[2] for item in items]


def test_missing_and_corrupt_images_error_or_skip(tiny_dataset, tmp_path):
    (tiny_dataset / "images" / "1003.png").unlink()
    (tiny_dataset / "images" / "1007.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError) as err:
        load_data(config_for(tmp_path, tiny_dataset))
    message = str(err.value)
    assert "2 image(s)" in message and "1003" in message and "1007" in message and "on_missing = skip" in message
    bundle = load_data(config_for(tmp_path, tiny_dataset, on_missing="skip"))
    assert sorted(bundle.skipped["FileID"]) == ["1003", "1007"]
    assert len(bundle.table) == 22 and not {"1003", "1007"} & set(bundle.table["FileID"])


def test_saved_split_is_reused(tiny_dataset, tmp_path):
    cfg = config_for(tmp_path, tiny_dataset)
    bundle = load_data(cfg)
    split_csv = tmp_path / "split.csv"
    bundle.split_table().to_csv(split_csv, index=False)
    other_seed = load_config(write_config(tmp_path / "config" / "config.ini", tiny_dataset,
                                          Training={"seed": 99}), env={})
    again = load_data(other_seed, split_csv=split_csv)
    assert again.table.set_index("FileID")["split"].equals(bundle.table.set_index("FileID")["split"])
