"""Batched prediction: class probabilities (and the mean loss) of every image of a loader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.engine.probabilities import Probabilities, softmax_probabilities
from src.engine.settings import LoopSettings, to_device
from src.utils.device import autocast


@dataclass
class Predictions:
    file_ids: list[str]
    probs: np.ndarray  # [N, 6, 5]
    targets: np.ndarray  # [N, 6]
    loss: float  # NaN when no criterion was given


@torch.no_grad()
def predict_batches(model: nn.Module, loader, device: torch.device, settings: LoopSettings | None = None,
                    criterion: nn.Module | None = None, desc: str = "predict",
                    probabilities: Probabilities = softmax_probabilities) -> Predictions:
    """Class probabilities of every image of `loader` (and the mean loss when `criterion` is given)."""
    settings = settings or LoopSettings()
    model.eval()
    loss_sum, file_ids, probs, targets_seen = 0.0, [], [], []
    for images, targets, ids in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not settings.progress):
        images, targets = to_device(images, targets, device, settings.channels_last)
        with autocast(device, settings.dtype):
            logits = model(images)
        if criterion is not None:
            loss_sum += criterion(logits, targets).item() * len(images)
        probs.append(probabilities(logits.float()).cpu())
        targets_seen.append(targets.cpu())
        file_ids.extend(ids)
    if not file_ids:  # a rank whose share of the data is empty
        return Predictions([], np.zeros((0, 6, 5), np.float32), np.zeros((0, 6), np.int64), float("nan"))
    loss = loss_sum / len(file_ids) if criterion is not None else float("nan")
    return Predictions(file_ids, torch.cat(probs).numpy(), torch.cat(targets_seen).numpy(), loss)
