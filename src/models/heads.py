"""Zone head: from a backbone feature map to one set of logits per lung zone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.data.zones import ZONES
from src.utils.errors import ConfigError

GRID = (3, 2)  # rows: sup, mid, inf from the top of the image; columns: image left, image right

# The cell of the GRID each zone reads with regional pooling. On a frontal radiograph the
# patient's right lung lies on the image's left, so right_* zones read column 0.
ZONE_CELLS = {
    "right_sup": (0, 0),
    "left_sup": (0, 1),
    "right_mid": (1, 0),
    "left_mid": (1, 1),
    "right_inf": (2, 0),
    "left_inf": (2, 1),
}
# mask: the model reads lung masks ([Data] mask_dir); passes: one backbone pass per zone, in the batch
# dimension (zone k of image b at b * 6 + k), as upstream's masking runs them.
POOLINGS = ("global", "regional", "mask", "passes")


class ZoneHead(nn.Module):
    """One dropout + linear classifier per zone: [B, C, h, w] -> logits [B, 6, num_classes].

    global: every classifier sees the average of the whole map; regional: the map is
    average-pooled to the 3x2 GRID and each classifier sees its zone's cell only; mask: each
    classifier sees the map averaged with its zone's mask (`zones` [B, 6, H, W], any H, W) as
    weights, the mask's share of every feature cell; passes: `features` are [B * 6, C, h, w], one map
    per zone, and each classifier sees the average of its own.
    """

    def __init__(self, channels: int, num_classes: int = 5, dropout: float = 0.5, pooling: str = "global"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(
                f"[Model] zone_pooling = {pooling!r} is not allowed: expected one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes)) for _ in ZONES
        )

    def pool(self, features: torch.Tensor, zones: torch.Tensor | None = None) -> torch.Tensor:
        """What the classifiers read: [B, 6, C], zone k's in row k; [B, 1, C] for global pooling, whose
        zones all read the one vector. A frozen backbone's pooled features can be cached: see
        src/training/feature_cache.py."""
        if self.pooling == "mask":
            weights = F.adaptive_avg_pool2d(zones.to(features.dtype), features.shape[-2:])
            pooled = torch.einsum("bchw,bzhw->bzc", features, weights)
            # A zone too small to cover any feature cell pools nothing rather than dividing by 0.
            return pooled / weights.sum(dim=(2, 3)).clamp_min(1e-6)[:, :, None]
        if self.pooling == "passes":
            return features.mean(dim=(2, 3)).unflatten(0, (-1, len(ZONES)))
        if self.pooling == "regional":
            cells = F.adaptive_avg_pool2d(features, GRID)
            return torch.stack([cells[:, :, row, col] for row, col in (ZONE_CELLS[zone] for zone in ZONES)], dim=1)
        return features.mean(dim=(2, 3))[:, None]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, 6 or 1, C] -> logits [B, 6, num_classes]."""
        inputs = pooled.expand(-1, len(ZONES), -1).unbind(1)
        return torch.stack([classify(x) for classify, x in zip(self.classifiers, inputs)], dim=1)

    def forward(self, features: torch.Tensor, zones: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pool(features, zones))


class PooledHead(nn.Module):
    """A ZoneHead (shared, not copied) on pooled features [B, 6 or 1, C]: what trains on cached features."""

    def __init__(self, head: ZoneHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head.classify(pooled)
