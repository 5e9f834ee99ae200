"""Test-time augmentation: class probabilities averaged over deterministic views of each image.

A horizontally mirrored view shows the right lung where the left was, so its zone outputs are
swapped back (`mirror_zones`, the swap training augmentation applies to labels) before they are
averaged with the other views'. Zoomed views keep the image centre; what a zoom-out uncovers is
black, as in training augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.data.zones import mirror_zones
from src.engine.probabilities import Probabilities

ZOOMS = {"none": (), "flip": (1.0,), "flip+scale": (1.0, 0.9, 1.1)}  # each zoom unflipped and mirrored


def zoom_images(images: torch.Tensor, zoom: float, background: float) -> torch.Tensor:
    """`images` [B, C, H, W] magnified `zoom` times about their centre; uncovered pixels = `background` in the
    image channel, 0 in the zone masks after it."""
    if zoom == 1.0:
        return images
    theta = torch.tensor([[1 / zoom, 0, 0], [0, 1 / zoom, 0]], dtype=torch.float32, device=images.device)
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    shift = torch.zeros(images.shape[1], device=images.device)
    shift[0] = background
    background = shift[:, None, None]
    shifted = images.float() - background  # zero padding in shifted units is the background colour
    return (F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            + background).to(images.dtype)


class TTAModel(nn.Module):
    """Images [B, 1, H, W] -> class probabilities [B, 6, 5]: `model`'s (read by `probabilities`)
    averaged over each zoom of `zooms`, unflipped and mirrored."""

    def __init__(self, model: nn.Module, probabilities: Probabilities,
                 zooms: tuple[float, ...], background: float) -> None:
        super().__init__()
        self.model, self.probabilities, self.zooms, self.background = model, probabilities, zooms, background

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = 0
        for zoom in self.zooms:
            view = zoom_images(images, zoom, self.background)
            total = total + self.probabilities(self.model(view))
            total = total + mirror_zones(self.probabilities(self.model(mirror_view(view))))
        return total / (2 * len(self.zooms))


def mirror_view(images: torch.Tensor) -> torch.Tensor:
    """`images` [B, C, H, W] flipped left to right; the zone masks after the image channel (if any) also
    swap sides, as training's flip does, so that each mask stays with its lung's label."""
    flipped = images.flip(-1)
    if images.shape[1] == 1:
        return flipped
    return torch.cat([flipped[:, :1], mirror_zones(flipped[:, 1:])], dim=1)


def with_tta(model: nn.Module, probabilities: Probabilities, tta: str, mean: float,
             std: float) -> tuple[nn.Module, Probabilities]:
    """The module to predict with for [Evaluation] tta = `tta` (`model` itself for none) and how to
    read its outputs: `probabilities` for the model's logits, as they are for TTA's averaged
    probabilities. mean/std: the input normalisation."""
    if not ZOOMS[tta]:
        return model, probabilities
    return TTAModel(model, probabilities, ZOOMS[tta], background=-mean / std), _already_probabilities


def _already_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.float()
