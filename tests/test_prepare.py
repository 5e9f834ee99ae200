"""Batches leave the cache as stored and become the model's input on the device, in one place: what the
model receives equals the normalised cache rows (and their zones' masks) exactly as before, batches
travel as uint8/uint16 images and uint8 zone maps, and num_workers changes nothing but who loads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config.loader import load_config
from src.config.schema import AugmentationConfig
from src.data.augment import BatchAugmenter
from src.data.dataset import loader_options, loader_workers, make_loader
from src.data.load import load_data
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.training.trainer import DebugRun, _Trainer, train_model
from src.utils.errors import ConfigError
from tests.conftest import write_config, write_tiny_dataset
from tests.test_distributed import _HostReads
from tests.test_masks import expected_map, write_pair_masks

MEAN, STD = 0.3, 0.2
CPU = torch.device("cpu")


def project(tmp_path: Path, masks: bool, **data: object) -> Path:
    """The tiny dataset (24 16-bit PNGs, with upstream's lung masks when `masks`), custom normalisation,
    no augmentation: a config whose batches can be worked out by hand."""
    root = write_tiny_dataset(tmp_path / "data")
    if masks:
        write_pair_masks(root / "masks")
        data["mask_dir"] = root / "masks"
    return write_config(tmp_path / "config" / "config.ini", root, Training={"n_epochs": 1},
                        Data={"normalization": "custom", "normalization_mean": MEAN, "normalization_std": STD, **data},
                        Augmentation={"enabled": "false"})


def expected_inputs(cache_images, file_ids: list[str], rows: np.ndarray, masks: bool, maximum: int) -> np.ndarray:
    """What the model read before batches left the loader as stored: the cache rows scaled to 0..1 and
    normalised on the host, then (with masks) each zone's 0/1 mask, from maps drawn by hand."""
    pixels = (np.asarray(cache_images[rows], dtype=np.float64) / maximum - MEAN) / STD
    channels = [pixels[:, None]]
    if masks:
        maps = np.stack([expected_map(int(file_id) - 1000) for file_id in file_ids])
        channels.append(np.stack([maps == zone for zone in range(1, 7)], axis=1).astype(np.float64))
    return np.concatenate(channels, axis=1)


@pytest.mark.parametrize("masks", [False, True], ids=["images", "lung-masks"])
def test_the_batches_that_reach_the_model_are_the_normalised_cache_rows(tmp_path, masks):
    cfg = load_config(project(tmp_path, masks), env={})
    trainer = _Trainer(cfg, None, DebugRun(), None)
    received = []
    trainer.model.register_forward_pre_hook(lambda module, args: received.append(args[0].detach().clone()))
    trainer._run_epoch(1, 1, None, threading.Event(), None)  # train, then validate, as a run does

    expected = []
    for loader in (trainer.train_loader, trainer.val_loader):
        dataset = loader.dataset
        for order in loader.batch_sampler:  # the epoch's batches, in the order the loop saw them
            ids = [dataset.file_ids[i] for i in order]
            expected.append(expected_inputs(trainer.data.cache.images, ids, dataset.cache_rows[order], masks, 65535))
    assert [tuple(r.shape) for r in received] == [e.shape for e in expected]
    assert received[0].shape[1] == (7 if masks else 1) and received[0].dtype == torch.float32
    for got, want in zip(received, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype, maximum", [("uint8", 255), ("uint16", 65535)])
def test_loader_batches_are_stored_integers_and_the_preparer_makes_the_same_input_in_channels_last(
        tmp_path, dtype, maximum):
    bundle = load_data(load_config(project(tmp_path, masks=True, cache_dtype=dtype), env={}))
    dataset = bundle.dataset("train")
    loader = make_loader(dataset, batch_size=8, shuffle=False)
    stored, targets, ids = next(iter(loader))
    images, zones = stored
    assert images.dtype == getattr(torch, dtype) and images.shape == (8, 32, 32)
    assert zones.dtype == torch.uint8 and zones.shape == (8, 32, 32)  # one map of zone numbers, not 6 floats
    prepared, on_device = BatchPreparer(Normalization(MEAN, STD))(stored, targets, CPU, channels_last=True)
    assert prepared.is_contiguous(memory_format=torch.channels_last) and torch.equal(on_device, targets)
    want = expected_inputs(bundle.cache.images, ids, dataset.cache_rows[:8], True, maximum)
    np.testing.assert_allclose(prepared.numpy(), want, rtol=0, atol=2e-6)


def test_preparing_an_augmented_batch_with_lung_masks_reads_nothing_on_the_host(tmp_path):
    """Every augmentation's parameters are drawn and used on the batch's device: no value is read back to
    the host (on a GPU each read would wait for the device to finish). Host-to-device copies a CPU cannot
    show; the preparer makes none but the batch's own, non-blocking."""
    bundle = load_data(load_config(project(tmp_path, masks=True), env={}))
    stored, targets, _ = next(iter(make_loader(bundle.dataset("train"), batch_size=8, shuffle=False)))
    everything = AugmentationConfig(rotation_degrees=10, scale=0.1, translate=0.1, brightness=0.2, contrast=0.2,
                                    gamma=0.2, noise_std=0.05, erasing_probability=0.5, horizontal_flip=0.5)
    prepare = BatchPreparer(Normalization(MEAN, STD), BatchAugmenter(everything, seed=1))
    with _HostReads() as reads:
        inputs, _ = prepare(stored, targets, CPU, channels_last=True)
    assert reads.count == 0 and inputs.shape == (8, 7, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="pinned memory needs a CUDA device: without one, torch.Tensor.pin_memory() raises "
                           "'Found no NVIDIA driver' (this torch is a CUDA build) and DataLoader ignores pin_memory")
def test_loader_batches_are_pinned_when_asked(tmp_path):
    bundle = load_data(load_config(project(tmp_path, masks=True), env={}))
    cuda = torch.device("cuda")
    cfg = load_config(project(tmp_path / "other", masks=True), env={})
    loader = make_loader(bundle.dataset("train"), batch_size=8, shuffle=False, **loader_options(cfg.training, cuda))
    (images, zones), targets, _ = next(iter(loader))
    assert images.is_pinned() and zones.is_pinned() and targets.is_pinned()


def test_num_workers_auto_is_none_on_a_cpu_and_a_count_as_given():
    cfg = load_config(None, env={})
    assert cfg.training.num_workers == "auto" and loader_workers("auto", CPU) == 0
    assert loader_workers("3", CPU) == 3 and not loader_options(cfg.training, CPU)["pin_memory"]
    assert 1 <= loader_workers("auto", torch.device("cuda")) <= 4  # computed without touching a GPU
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ConfigError, match=r"num_workers = .* expected auto or an integer >= 0"):
            load_config(None, [f"Training.num_workers={bad}"], env={})


def test_a_run_loading_in_two_persistent_workers_equals_one_loading_in_process(tmp_path):
    histories = []
    for workers in (0, 2):
        path = project(tmp_path / str(workers), masks=False)
        cfg = load_config(path, [f"Training.num_workers={workers}", "Training.n_epochs=2", "Augmentation.enabled=true",
                                 "Augmentation.horizontal_flip=0.5"], env={})
        result = train_model(cfg)
        logs = result.run_dir / "logs"
        rows = zip(json.loads((logs / "training_history.json").read_text()),
                   json.loads((logs / "validation_history.json").read_text()))
        histories.append([{k: v for k, v in {**t, **v}.items() if k not in ("images_per_second", "epoch_seconds")}
                          for t, v in rows])
    assert histories[0] == histories[1] and len(histories[0]) == 2
