"""The six lung zones and their scores (named in src/config/names.py): what is done with them."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from src.config.names import CLASS_NAMES, KNOWN_CLASSES, UNKNOWN, ZONES  # noqa: F401  (declared with the config)

# A horizontal flip moves the right lung to the left: zone i takes zone MIRRORED_ZONES[i]'s label.
MIRRORED_ZONES = (1, 0, 3, 2, 5, 4)
PerZone = TypeVar("PerZone")  # a numpy array or torch tensor [B, 6, ...]


def mirror_zones(per_zone: PerZone) -> PerZone:
    """Zone labels or outputs [B, 6, ...] of the horizontally flipped images: left and right swapped."""
    return per_zone[:, list(MIRRORED_ZONES)]


def csi_from_scores(scores: np.ndarray) -> np.ndarray:
    """CSI per image: mean of the known (0-3) zone scores; NaN where no zone is known.

    `scores` is [N, 6] (or [6]) of integers 0-4.
    """
    scores = np.asarray(scores, dtype=float)
    known = scores != UNKNOWN
    total = np.where(known, scores, 0.0).sum(axis=-1)
    count = known.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
