"""Random augmentation of whole training batches on their device, with parameters drawn per image.

torchvision.transforms.v2 draws one parameter set per call, so a batch would get one transform for
all of its images; this module draws every image's parameters at once and applies them vectorised.

Randomness: batch b of epoch e on rank r draws from a generator on the batch's device seeded from
([Training] seed, r, e, b). Ranks augment differently, a run is reproducible, a run resumed inside an
epoch (`set_epoch(epoch, first_batch)`) draws exactly what the uninterrupted run drew, and there is
no generator state to checkpoint beyond the epoch and batch the checkpoint holds. Every parameter is
drawn and used on the device: the step never waits for a host-to-device copy. The global generators
(initialisation, dropout) are never touched.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from src.config.schema import AugmentationConfig
from src.data.zones import mirror_zones

ERASE_AREA = (0.02, 0.2)  # fraction of the image
ERASE_ASPECT = (0.3, 3.3)  # height / width
N_UNIFORMS = 13  # per image: rotation, scale, shift x, shift y, flip, brightness, contrast, gamma, erase x 5


class BatchAugmenter:
    """Augments grey batches before normalisation: `images, targets = augmenter(images, targets)`.

    `images` are [B, 1, H, W] intensities in 0..1, or [B, 7, H, W] with the six zone masks after them
    (src/data/prepare.py); `targets` LongTensor[B, 6]. One resampling applies rotation, zoom, shift and
    horizontal flip to the image and its masks alike; a flip also mirrors the zone labels and masks
    (the lung now on the image's left is the right lung's). Intensity changes are clamped to 0..1;
    erasing fills a rectangle with the image mean; masks keep their values. The output has the
    input's dtype and strides. A disabled or all-zero config returns its inputs unchanged.
    """

    def __init__(self, aug: AugmentationConfig, seed: int = 0, rank: int = 0) -> None:
        self.aug, self.seed, self.rank = aug, seed, rank
        self.geometric = max(aug.rotation_degrees, aug.scale, aug.translate, aug.horizontal_flip) > 0
        self.intensity = max(aug.brightness, aug.contrast, aug.gamma, aug.noise_std) > 0
        self.active = aug.enabled and (self.geometric or self.intensity or aug.erasing_probability > 0)
        self.epoch, self.batch = 0, 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """The next call augments batch `first_batch` of `epoch` (as EpochBatchSampler.set_epoch)."""
        self.epoch, self.batch = epoch, first_batch

    def _generator(self, device: torch.device) -> torch.Generator:
        """The device's generator, seeded for the current batch (seeding a CUDA generator is a host-side act)."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device)
        # SeedSequence mixes the four numbers, so neighbouring ranks and batches get unrelated streams.
        words = np.random.SeedSequence([self.seed, self.rank, self.epoch, self.batch]).generate_state(2)
        return self._generators[device].manual_seed(int(words[0]) << 32 | int(words[1]))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.active:
            return images, targets
        device = images.device
        generator = self._generator(device)
        self.batch += 1
        u = torch.rand(images.shape[0], N_UNIFORMS, generator=generator, device=device)
        signed = 2 * u - 1
        x = images.to(torch.float32, copy=True)  # worked on in place; zero padding and clamping mean black
        if self.geometric:
            flip = u[:, 4] < self.aug.horizontal_flip
            x = self._warp(x, signed[:, :4], flip)
            if self.aug.horizontal_flip > 0:
                targets = torch.where(flip[:, None], mirror_zones(targets), targets)
                if x.shape[1] > 1:
                    x[:, 1:] = torch.where(flip[:, None, None, None], mirror_zones(x[:, 1:]), x[:, 1:])
        image = x[:, :1]
        if self.intensity:
            image = self._intensity(image, signed[:, 5:8], generator)
        if self.aug.erasing_probability > 0:
            image = self._erase(image, u[:, 8:])
        # Writing into empty_like keeps the input's dtype and exact strides (e.g. channels_last).
        out = torch.empty_like(images)
        out[:, :1] = image
        out[:, 1:] = x[:, 1:]
        return out, targets

    def _warp(self, x: torch.Tensor, signed: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Rotate about the centre, zoom, flip and shift each image (signed: [B, 4] in -1..1) at once."""
        aug = self.aug
        h, w = x.shape[-2:]
        angle = signed[:, 0] * math.radians(aug.rotation_degrees)
        zoom = 1 + signed[:, 1] * aug.scale
        shift = signed[:, 2:4] * aug.translate * 2  # normalised coordinates span 2 per side
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # theta maps output to input coordinates: the inverse rotation and zoom, expressed in
        # coordinates normalised per axis so that non-square images rotate without shearing.
        linear = torch.stack([torch.stack([cos, sin * h / w], -1), torch.stack([-sin * w / h, cos], -1)], 1)
        linear[:, :, 0] *= torch.where(flip, -1.0, 1.0)[:, None]
        theta = torch.cat([linear, -(linear @ shift[:, :, None])], 2)
        return F.grid_sample(x, _affine_grid(theta, h, w), mode="bilinear", padding_mode="zeros",
                             align_corners=False)

    def _intensity(self, x: torch.Tensor, signed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast and gamma (signed: [B, 3] in -1..1), then noise; result in 0..1."""
        aug = self.aug
        brightness, contrast, gamma = (signed[:, k, None, None, None] * strength for k, strength in
                                       enumerate((aug.brightness, aug.contrast, aug.gamma)))
        # Brightness then contrast about the image mean is one affine map per image.
        factor = 1 + contrast
        offset = (1 - factor) * x.mean(dim=(1, 2, 3), keepdim=True) + brightness
        x = x.mul_(factor).add_(offset).clamp_(0, 1).pow_(1 + gamma)
        if aug.noise_std > 0:
            x = x.add_(torch.randn(x.shape, generator=generator, device=x.device), alpha=aug.noise_std)
        return x.clamp_(0, 1)

    def _erase(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """With erasing_probability, fill one rectangle per image (u: [B, 5] in 0..1) with its mean."""
        h, w = x.shape[-2:]
        area = h * w * (ERASE_AREA[0] + u[:, 1] * (ERASE_AREA[1] - ERASE_AREA[0]))
        aspect = torch.exp(math.log(ERASE_ASPECT[0]) + u[:, 2] * math.log(ERASE_ASPECT[1] / ERASE_ASPECT[0]))
        erase = u[:, 0] < self.aug.erasing_probability
        eh = torch.sqrt(area * aspect).round().clamp(1, h) * erase  # height 0: nothing erased
        ew = torch.sqrt(area / aspect).round().clamp(1, w)
        top, left = (u[:, 3] * (h - eh + 1)).floor(), (u[:, 4] * (w - ew + 1)).floor()
        box = torch.stack([top, top + eh, left, left + ew], 1)[:, :, None]
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (rows >= box[:, 0]) & (rows < box[:, 1])
        in_cols = (cols >= box[:, 2]) & (cols < box[:, 3])
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
        return torch.where(mask, x.mean(dim=(1, 2, 3), keepdim=True), x)


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, [B, C, h, w], align_corners=False), 3x faster on CPU (one shared base grid)."""
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=theta.device)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=theta.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=theta.device)], -1)
    return (base.view(1, h * w, 3) @ theta.mT).view(-1, h, w, 2)
