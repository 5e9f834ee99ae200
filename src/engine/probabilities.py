"""The probability reading of logits: what a model's five outputs per zone mean, per [Loss] loss.

The ordinal loss reads the same five logits differently from softmax, so training, evaluation and an
exported model all take the reading from here, by the loss the model was trained with."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from src.config.names import UNKNOWN
from src.config.schema import section_fields

LOSS_NAMES: tuple[str, ...] = section_fields("Loss")["loss"].metadata["choices"]
Probabilities = Callable[[torch.Tensor], torch.Tensor]  # logits -> class probabilities


def softmax_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


def ordinal_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Log class probabilities [..., 5] of the ordinal reading of logits [..., 5].

    logit 4 is the log-odds of Unknown; logits 0-2 are CORN conditional log-odds
    P(score > k | score > k-1, known) for k = 0, 1, 2; logit 3 is unused. The products of
    conditional probabilities make P(score > k) decrease with k by construction, so no clipping
    is needed, and the five probabilities sum to 1.
    """
    logits = logits.float()
    # log sigmoid(l) and log (1 - sigmoid(l)); softplus, as F.logsigmoid's CPU kernel is slow on small tensors.
    log_yes, log_no = -F.softplus(-logits), -F.softplus(logits)
    reach = F.pad(torch.cumsum(log_yes[..., :3], dim=-1), (1, 0))  # log P(score >= k | known), k = 0..3
    log_score = reach + F.pad(log_no[..., :3], (0, 1))  # score 3 is certain once score >= 3
    return torch.cat([log_no[..., UNKNOWN:] + log_score, log_yes[..., UNKNOWN:]], dim=-1)


def softmax_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def ordinal_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return ordinal_log_probabilities(logits).exp()


def probabilities_for(loss_name: str) -> Probabilities:
    """Logits [..., 5] -> class probabilities of a model trained with [Loss] loss = `loss_name`."""
    if loss_name not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {loss_name!r}")
    return ordinal_probabilities if loss_name == "ordinal" else softmax_probabilities
