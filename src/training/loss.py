"""Zone losses: weighted cross-entropy, focal, label smoothing and ordinal, chosen by [Loss] loss.

Every loss is a weighted mean over the B x 6 zone targets. A known target (score 0-3) weighs 1,
or with `class_weights = balanced` its zone's inverse class frequency; an Unknown target weighs
`unknown_weight`. Each loss also owns the mapping from logits to class probabilities
(`probabilities`), since the ordinal loss reads the same 5 logits differently from softmax.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from src.config.schema import Config
from src.data.zones import KNOWN_CLASSES, UNKNOWN, ZONES
from src.engine.probabilities import ordinal_log_probabilities, softmax_log_probabilities


def balanced_class_weights(train_labels: np.ndarray) -> torch.Tensor:
    """Per-zone inverse frequency weights [6, 4] of the known classes in `train_labels` [N, 6].

    Scaled so that a zone's known training targets weigh 1 on average. A class absent from a
    zone's training labels takes that zone's largest weight (it is at least as rare as the rarest
    seen one), so it still counts in validation; a zone without any known label weighs 1.
    """
    labels = np.asarray(train_labels)
    if labels.ndim != 2 or labels.shape[1] != len(ZONES):
        raise ValueError(f"train_labels must be [N, {len(ZONES)}], got shape {labels.shape}")
    counts = np.stack([(labels == c).sum(axis=0) for c in KNOWN_CLASSES], axis=1).astype(float)
    present = counts > 0
    n_present = present.sum(axis=1, keepdims=True)
    weights = np.where(present, counts.sum(axis=1, keepdims=True) / np.maximum(n_present * counts, 1), 0.0)
    fallback = np.where(n_present > 0, weights.max(axis=1, keepdims=True), 1.0)
    return torch.tensor(np.where(present, weights, fallback), dtype=torch.float32)


class WeightedCSILoss(nn.Module):
    """Weighted mean of the per-zone cross-entropies (negative log-likelihoods).

    Every zone target counts with weight 1 (or its `class_weights` [6, 4] entry for its zone and
    known class), except Unknown (class 4) targets, which count with `unknown_weight`: the model
    still learns to flag ungradable zones without that easy class dominating the gradient.
    Subclasses change the per-target term (focal, label smoothing) or the probability model
    (ordinal); the weighting stays the same.
    """

    def __init__(self, unknown_weight: float = 0.3, num_classes: int = 5,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        weights = torch.ones(1 if class_weights is None else len(ZONES), num_classes)
        if class_weights is not None:
            weights[:, list(KNOWN_CLASSES)] = torch.as_tensor(class_weights, dtype=torch.float32)
        weights[:, UNKNOWN] = unknown_weight
        self.register_buffer("target_weights", weights)  # [zones or 1, classes]

    def log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return softmax_log_probabilities(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, 6, 5] -> class probabilities [B, 6, 5] (non-negative, summing to 1)."""
        return self.log_probabilities(logits).exp()

    def per_target(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of each zone target [B, 6] given log class probabilities [B, 6, C]."""
        return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`logits` [B, 6, C], `targets` [B, 6] -> scalar loss."""
        per_target = self.per_target(self.log_probabilities(logits), targets)
        weights = self.target_weights.expand(*targets.shape, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (weights * per_target).sum() / weights.sum().clamp_min(1e-12)


class FocalLoss(WeightedCSILoss):
    """Cross-entropy scaled by (1 - p_target)^gamma: confidently right targets fade out.

    gamma = 0 is WeightedCSILoss.
    """

    def __init__(self, gamma: float = 2.0, unknown_weight: float = 0.3,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__(unknown_weight, class_weights=class_weights)
        self.gamma = gamma

    def per_target(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = -super().per_target(log_probs, targets)
        # -expm1 keeps 1 - p accurate near p = 1; the floor keeps the gradient of x^gamma finite at 0.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
        return -(one_minus_p ** self.gamma) * log_p


class LabelSmoothingLoss(WeightedCSILoss):
    """Cross-entropy against smoothed targets.

    A known score keeps 1 - smoothing and shares `smoothing` equally over the four scores 0-3
    (torch's label_smoothing convention, restricted to the scores): it softens which score, not
    whether the zone is gradable. Unknown targets stay one-hot, so no mass goes from them to the
    scores.
    """

    def __init__(self, smoothing: float = 0.1, unknown_weight: float = 0.3,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__(unknown_weight, class_weights=class_weights)
        self.smoothing = smoothing

    def per_target(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nll = super().per_target(log_probs, targets)
        # A slice, not a list index: indexing by a list copies it to the device and waits for the copy.
        spread = -log_probs[..., KNOWN_CLASSES[0]:KNOWN_CLASSES[-1] + 1].mean(dim=-1)
        return torch.where(targets == UNKNOWN, nll, (1 - self.smoothing) * nll + self.smoothing * spread)


class OrdinalLoss(WeightedCSILoss):
    """Negative log-likelihood of the ordinal model of `ordinal_log_probabilities`.

    Per target this is the binary cross-entropy of the Unknown head (logit 4) plus, for a known
    score y, the CORN loss: the binary cross-entropies of 'score > k' for every k <= min(y, 2)
    (the conditional tasks whose subset y belongs to). Weighted like every loss here.
    """

    def log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return ordinal_log_probabilities(logits)


def build_criterion(cfg: Config, train_labels: np.ndarray | None = None) -> WeightedCSILoss:
    """The [Loss] criterion; `train_labels` [N, 6] (training split) are needed for balanced weights."""
    loss = cfg.loss
    class_weights = None
    if loss.class_weights == "balanced":
        if train_labels is None:
            raise ValueError("class_weights = balanced needs the training split's labels (train_labels)")
        class_weights = balanced_class_weights(train_labels)
    weighting = {"unknown_weight": loss.unknown_weight, "class_weights": class_weights}
    if loss.loss == "focal":
        return FocalLoss(loss.focal_gamma, **weighting)
    if loss.loss == "label_smoothing":
        return LabelSmoothingLoss(loss.label_smoothing, **weighting)
    if loss.loss == "ordinal":
        return OrdinalLoss(**weighting)
    return WeightedCSILoss(**weighting)
