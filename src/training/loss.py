"""WeightedCSILoss: cross-entropy over the 5 classes of each zone, Unknown down-weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.data.zones import UNKNOWN


class WeightedCSILoss(nn.Module):
    """Weighted mean of the per-zone cross-entropies.

    Every zone target counts with weight 1, except Unknown (class 4) targets, which count with
    `unknown_weight`: the model still learns to flag ungradable zones without that easy class
    dominating the gradient.
    """

    def __init__(self, unknown_weight: float = 0.3, num_classes: int = 5) -> None:
        super().__init__()
        weights = torch.ones(num_classes)
        weights[UNKNOWN] = unknown_weight
        self.register_buffer("class_weights", weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`logits` [B, 6, C], `targets` [B, 6] -> scalar loss."""
        num_classes = logits.shape[-1]
        per_target = F.cross_entropy(logits.reshape(-1, num_classes).float(), targets.reshape(-1),
                                     reduction="none")
        weights = self.class_weights[targets.reshape(-1)]
        return (weights * per_target).sum() / weights.sum().clamp_min(1e-12)
