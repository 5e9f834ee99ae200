"""Batched prediction: class probabilities (and the mean loss) of every image of a loader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.data.prepare import BatchPreparer
from src.engine.probabilities import Probabilities, softmax_probabilities
from src.engine.settings import LoopSettings
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
                    probabilities: Probabilities = softmax_probabilities,
                    prepare: BatchPreparer | None = None) -> Predictions:
    """Class probabilities of every image of `loader` (and the mean loss when `criterion` is given).

    `prepare` makes each batch the model's input on `device` (src/data/prepare.py; the default takes
    batches that are model inputs already). Nothing is read back to the host until the last batch:
    the loss and probabilities accumulate on the device, the targets are the loader's own."""
    settings = settings or LoopSettings()
    prepare = prepare or BatchPreparer()
    model.eval()
    loss_sum, file_ids, probs, targets_seen = torch.zeros((), device=device), [], [], []
    for inputs, targets, ids in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not settings.progress):
        images, on_device = prepare(inputs, targets, device, settings.channels_last)
        with autocast(device, settings.dtype):
            logits = model(images)
        if criterion is not None:
            loss_sum += criterion(logits, on_device).detach().float() * len(images)
        probs.append(probabilities(logits.float()))
        targets_seen.append(targets)
        file_ids.extend(ids)
    if not file_ids:  # a rank whose share of the data is empty
        return Predictions([], np.zeros((0, 6, 5), np.float32), np.zeros((0, 6), np.int64), float("nan"))
    loss = float(loss_sum) / len(file_ids) if criterion is not None else float("nan")
    return Predictions(file_ids, torch.cat(probs).cpu().numpy(), torch.cat(targets_seen).cpu().numpy(), loss)
