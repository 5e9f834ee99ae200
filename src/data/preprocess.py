"""Turn raw intensities into the fixed-size, 0..1 images the cache stores and the models read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from src.config.schema import DataConfig

STORAGE_MAX = {"uint8": 255, "uint16": 65535}

# Mean over the RGB channels of ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
_NORMALIZATION_PRESETS = {"imagenet": (0.449, 0.226), "medical": (0.5, 0.25), "simple": (0.5, 0.5)}


def scale_intensity(image: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """Clip `image` to its [low, high] percentiles and map that range linearly onto 0..1."""
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [low_percentile, high_percentile]).astype(np.float32)
    if high <= low:  # constant (or almost constant) image: nothing to stretch
        return np.zeros(image.shape, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def resize(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize to size x size: "plain" stretches, "pad" keeps the aspect ratio and centres on zeros."""
    if mode not in ("plain", "pad"):
        raise ValueError(f"resize mode must be 'plain' or 'pad', got {mode!r}")
    if mode == "plain":
        return _interpolate(image, size, size)
    top, left, new_h, new_w = placement(image.shape, size, mode)
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = _interpolate(image, new_h, new_w)
    return out


def placement(shape: tuple[int, int], size: int, mode: str) -> tuple[int, int, int, int]:
    """Where `resize` puts an image of `shape` in its size x size output: top, left, height, width."""
    if mode == "plain":
        return 0, 0, size, size
    h, w = shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def _interpolate(image: np.ndarray, h: int, w: int) -> np.ndarray:
    # Pillow's bilinear filter widens with the scale factor when downscaling (antialiasing), and its
    # weights are non-negative, so the output stays within the input's range. Pillow rather than
    # torch keeps the cache's decoding workers free of the slow torch import.
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def to_storage(image01: np.ndarray, dtype: str) -> np.ndarray:
    """Quantise a 0..1 image to "uint8" or "uint16", rounding to the nearest level."""
    if dtype not in STORAGE_MAX:
        raise ValueError(f"storage dtype must be one of {sorted(STORAGE_MAX)}, got {dtype!r}")
    return np.rint(np.clip(image01, 0.0, 1.0) * STORAGE_MAX[dtype]).astype(dtype)


def from_storage(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of to_storage: a uint8/uint16 numpy array or torch tensor back to float32 0..1."""
    dtype = str(array.dtype).removeprefix("torch.")
    if dtype not in STORAGE_MAX:
        raise ValueError(f"stored images must be uint8 or uint16, got {dtype}")
    if not isinstance(array, np.ndarray):  # a torch tensor: uint16 supports few ops, but .float() is one
        return array.float() / STORAGE_MAX[dtype]
    return array.astype(np.float32) / np.float32(STORAGE_MAX[dtype])


def preprocess_image(
    image: np.ndarray, size: int, mode: str, low_percentile: float, high_percentile: float, dtype: str
) -> np.ndarray:
    """Raw intensities -> clipped, scaled, resized image in the cache's storage dtype."""
    return to_storage(resize(scale_intensity(image, low_percentile, high_percentile), size, mode), dtype)


def normalization_stats(name: str, mean: float, std: float) -> tuple[float, float]:
    """(mean, std) for 1-channel input: a preset by name, or `mean`/`std` when name is "custom".

    "weights" (the weights' own statistics) is resolved to custom values before training
    (src/models/zoo resolve_preprocessing); unresolved it stands for a model trained from scratch,
    normalised like ImageNet."""
    if name == "custom":
        return mean, std
    if name == "weights":
        return _NORMALIZATION_PRESETS["imagenet"]
    if name not in _NORMALIZATION_PRESETS:
        raise ValueError(f"normalization must be one of {[*_NORMALIZATION_PRESETS, 'custom']}, got {name!r}")
    return _NORMALIZATION_PRESETS[name]


@dataclass(frozen=True)
class Normalization:
    """A model's input normalisation, (x - mean) / std of pixels x in 0..1.

    One owner: the resolved [Data] keys of a run's config (src/models/zoo resolve_preprocessing writes
    the weights' own statistics there before training, and checkpoints and exports carry them). The
    data never holds normalised pixels: src/data/prepare.py applies this on the device, the ONNX
    scorer on numpy arrays, with this one formula."""

    mean: float
    std: float

    @classmethod
    def of(cls, data: DataConfig) -> Normalization:
        return cls(*normalization_stats(data.normalization, data.normalization_mean, data.normalization_std))

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Normalised `pixels` (0..1, float32 numpy array or torch tensor on any device)."""
        return (pixels - self.mean) / self.std
