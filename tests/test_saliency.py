"""Grad-CAM per zone: every architecture the tool builds yields maps, ViT included through its
token grid; which test images are explained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.data.zones import ZONES
from src.evaluation.saliency import saliency_rows, zone_cams
from src.models.factory import build_model

SIZE = 96  # custom_cnn's output stride is 32: a 3x3 map, one row per zone row


@pytest.mark.parametrize("arch, size", [("custom_cnn", 64), ("resnet50", 64), ("densenet121", 64),
                                        ("vit_b_16", 32)])
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
