"""Grad-CAM per zone: a trained model looks at the zone that carries the signal, the maps sit where
the feature cells look, every architecture the tool builds yields maps (ViT through its token
grid), and which test images are explained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.data.dataset import CSIDataset, make_loader
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.data.zones import ZONES
from src.engine.settings import LoopSettings
from src.evaluation.saliency import grid_misalignment, saliency_rows, zone_cams
from src.models.factory import build_model
from src.models.heads import GRID, ZONE_CELLS
from src.training.loop import train_epoch

SIZE = 160  # custom_cnn's output stride is 32: a 5x5 map, fine enough for 53 x 80 px zone cells
PREPARE = BatchPreparer(Normalization(0.5, 0.25))


def one_zone_images(zones: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, SIZE, SIZE] uint8 noise, each with a bright square somewhere inside the cell of `zones[i]`."""
    images = rng.normal(60, 12, (len(zones), SIZE, SIZE))
    cell_h, cell_w = SIZE // GRID[0], SIZE // GRID[1]
    side = SIZE // 6
    for image, zone in zip(images, zones):
        row, col = ZONE_CELLS[ZONES[zone]]
        top = row * cell_h + rng.integers(2, cell_h - side - 2)
        left = col * cell_w + rng.integers(2, cell_w - side - 2)
        image[top:top + side, left:left + side] += 150
    return np.clip(images, 0, 255).astype(np.uint8)


def one_zone_dataset(n: int, seed: int) -> CSIDataset:
    """Images whose only signal is in one zone; that zone scores 3 (Severe), the others 0."""
    rng = np.random.default_rng(seed)
    zones = np.arange(n) % len(ZONES)
    labels = np.zeros((n, len(ZONES)), dtype=np.int64)
    labels[np.arange(n), zones] = 3
    return CSIDataset(one_zone_images(zones, rng), np.arange(n), labels, [str(i) for i in range(n)])


def own_cell_share(cam: np.ndarray, zone: str) -> float:
    """Share of a map's mass inside the zone's own grid cell."""
    row, col = ZONE_CELLS[zone]
    cell_h, cell_w = cam.shape[0] // GRID[0], cam.shape[1] // GRID[1]
    return float(cam[row * cell_h:(row + 1) * cell_h, col * cell_w:(col + 1) * cell_w].sum() / cam.sum())


def test_each_zone_map_puts_most_of_its_mass_in_its_own_cell():
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), {"Model.model_arch": "custom_cnn", "Model.pretrained": False,
                                     "Model.zone_pooling": "regional", "Model.dropout": 0.0,
                                     "Data.image_size": SIZE})
    model = build_model(cfg)
    loader = make_loader(one_zone_dataset(96, seed=0), batch_size=16, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def zone_loss(logits, targets):
        return criterion(logits.flatten(0, 1), targets.flatten())

    for epoch in range(4):
        loader.batch_sampler.set_epoch(epoch)
        train_epoch(model, loader, zone_loss, optimizer, torch.device("cpu"), epoch + 1, LoopSettings(progress=False),
                    prepare=PREPARE)

    test = one_zone_dataset(12, seed=1)
    images, _ = PREPARE(*test.__getitems__(list(range(len(test))))[:2], torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(-1).numpy()
    assert (predicted == test.labels.numpy()).mean() > 0.9, "the tiny model did not learn the one-zone signal"
    maps = zone_cams(model, images, predicted)
    shares = [own_cell_share(maps[i, z], ZONES[z]) for i, z in enumerate(np.arange(len(test)) % len(ZONES))]
    # Chance is 1/6 of the image: the signal's own cell holds most of its zone's map, and even on
    # the least clear image well over twice chance (maps are 5x5 cells upsampled, so they spill).
    assert np.median(shares) > 0.6 and min(shares) > 0.4, [round(s, 2) for s in shares]


def test_maps_sit_where_the_cnn_cells_look():
    """Stride-2 convolutions padded by k//2 centre feature cell j on pixel 32*j, not on 32*j + 15.5
    where resizing the map would put it: the maps are moved back by that much."""
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), {"Model.model_arch": "custom_cnn", "Model.pretrained": False,
                                     "Data.image_size": 192})
    rows, cols = grid_misalignment(build_model(cfg).eval(), torch.randn(1, 192, 192))
    assert rows == pytest.approx(-15.5, abs=1.5) and cols == pytest.approx(-15.5, abs=1.5)


@pytest.mark.parametrize("arch, size", [("custom_cnn", 64), ("resnet50", 64), ("densenet121", 64),
                                        ("vit_b_16", 32), pytest.param("chexnet", 64, marks=pytest.mark.long),
                                        pytest.param("raddino", 28, marks=pytest.mark.long),
                                        ("timm:test_resnet.r160_in1k", 64), ("timm:test_vit.r160_in1k", 32)])
def test_every_architecture_gives_one_map_per_zone(arch, size):
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), {"Model.model_arch": arch, "Model.pretrained": False, "Data.image_size": size})
    model = build_model(cfg)
    images = torch.randn(2, 1, size, size)
    maps = zone_cams(model, images, np.array([[0, 1, 2, 3, 4, 0], [3, 3, 2, 1, 0, 0]]))
    assert maps.shape == (2, len(ZONES), size, size)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # Not a constant: the maps vary over the image (an untrained model may weigh some zones to zero).
    assert maps.std(axis=(2, 3)).max() > 0.05, arch


def test_saliency_rows_take_largest_errors_then_a_seeded_sample():
    true = np.array([0.0, 1.0, 2.0, np.nan, 1.0, 0.5, 3.0, 2.0])
    pred = np.array([0.1, 2.5, 2.0, 1.0, 0.0, 0.5, 1.0, 2.2])
    chosen = saliency_rows(true, pred, largest=2, random=3, seed=4)
    assert chosen[:2] == [(6, "largest CSI error"), (1, "largest CSI error")]
    sample = [row for row, why in chosen[2:]]
    assert len(sample) == 3 and not {6, 1} & set(sample) and all(why == "random sample" for _, why in chosen[2:])
    assert saliency_rows(true, pred, 2, 3, seed=4) == chosen  # fixed by the seed
