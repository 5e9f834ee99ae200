"""The one step from a loader's batch to the model's input, on the device.

Batches leave the cache as it stores them (src/data/dataset.py StoredBatch: uint8/uint16 images, uint8
zone maps) and are copied to the device without blocking the host (from pinned memory on CUDA; on a
CPU the copies are no-ops). There, and only there, they become what the model reads: intensities in
0..1 (from_storage), each zone map's six masks (one_hot_zones), the training augmentation, the
normalisation (x - mean) / std and the memory format. Training, validation, evaluation, prediction
and Grad-CAM all go through it, so every mode feeds a model the same numbers, and no step waits on
a host-side conversion.
"""

from __future__ import annotations

import torch

from src.data.augment import BatchAugmenter
from src.data.dataset import StoredBatch
from src.data.masks import one_hot_zones
from src.data.preprocess import Normalization, from_storage


class BatchPreparer:
    """`inputs, targets = prepare(batch_inputs, targets, device, channels_last)` for each loader batch.

    `normalization`: the model's (Normalization.of its run's resolved [Data]); `augmenter`: training
    batches only. A batch whose inputs are a float tensor (batches made in memory, as in tests and
    benchmarks) is the model's input already: it is moved and laid out only. Without a normalization
    only such batches are accepted.
    """

    def __init__(self, normalization: Normalization | None = None, augmenter: BatchAugmenter | None = None) -> None:
        self.normalization, self.augmenter = normalization, augmenter

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Where the augmenter's draws continue from (see BatchAugmenter): call with the sampler's."""
        if self.augmenter is not None:
            self.augmenter.set_epoch(epoch, first_batch)

    def __call__(self, inputs: StoredBatch | torch.Tensor, targets: torch.Tensor, device: torch.device,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        targets = targets.to(device, non_blocking=True)
        if isinstance(inputs, torch.Tensor):
            if self.augmenter is not None:
                raise TypeError("augmentation works on stored batches (StoredBatch), not on model inputs")
            return inputs.to(device, non_blocking=True, memory_format=memory_format), targets
        if self.normalization is None:
            raise TypeError("a stored batch needs the model's Normalization to become its input")
        x = from_storage(inputs.images.to(device, non_blocking=True))[:, None]
        if inputs.zones is not None:
            x = torch.cat([x, one_hot_zones(inputs.zones.to(device, non_blocking=True))], dim=1)
        if self.augmenter is not None:
            x, targets = self.augmenter(x, targets)
        x[:, :1] = self.normalization(x[:, :1])
        return x.contiguous(memory_format=memory_format), targets
