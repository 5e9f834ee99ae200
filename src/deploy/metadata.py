"""What an exported model carries beside its weights: everything needed to prepare its input and
read its output, so that a scorer needs neither the checkpoint nor PyTorch.

Torch-free on purpose: `predict --runtime onnx` imports this module and must run where PyTorch is
not installed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from src.config.schema import Config, DataConfig
from src.data.masks import reads_masks
from src.data.preprocess import Normalization
from src.data.zones import CLASS_NAMES, ZONES
from src.utils.errors import ExportError

METADATA_KEY = "csi_predictor"  # ONNX metadata_props key / TorchScript extra file holding the JSON
METADATA_FORMAT = 1
INPUT_NAME, MASK_INPUT_NAME, OUTPUT_NAME = "image", "zone_masks", "probabilities"
INPUT_NAMES = (INPUT_NAME, MASK_INPUT_NAME)  # the second only for a model trained with lung masks
# Preprocessing keys of [Data] that decide the pixels the model reads, recorded under these names.
_PIXEL_KEYS = ("image_size", "resize_mode", "clip_low_percentile", "clip_high_percentile", "cache_dtype")


def describe_model(cfg: Config, temperature: float | None) -> dict[str, Any]:
    """The metadata of a model trained with `cfg` (its checkpoint's config)."""
    normalization = Normalization.of(cfg.data)
    size = cfg.data.image_size
    return {
        "format": METADATA_FORMAT,
        "arch": cfg.model.model_arch,
        "loss": cfg.loss.loss,
        "preprocessing": {key: getattr(cfg.data, key) for key in _PIXEL_KEYS}
        | {"normalization_mean": normalization.mean, "normalization_std": normalization.std},
        "input": f"{INPUT_NAME}: float32 [batch, 1, {cfg.data.image_size}, {cfg.data.image_size}], "
                 "pixels scaled to 0..1 as preprocessed, then (x - normalization_mean) / normalization_std",
        "mask_input": (f"{MASK_INPUT_NAME}: float32 [batch, zones, {size}, {size}], channel k 1 inside zone k "
                       "and 0 elsewhere, from the image's lung masks resized like the image (src/data/masks.py)"
                       if reads_masks(cfg.data) else None),
        "zone_split": cfg.model.zone_split,
        "output": f"{OUTPUT_NAME}: float32 [batch, zones, classes], class probabilities per zone",
        "zones": list(ZONES),
        "classes": list(CLASS_NAMES),
        "temperature": temperature,
    }


def parse_metadata(text: str | None, source: str) -> dict[str, Any]:
    """The metadata JSON an exported model carries; `source` names the file in errors."""
    if not text:
        raise ExportError(f"{source}: no {METADATA_KEY!r} metadata; export the model with --mode export")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{source}: {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        raise ExportError(f"{source}: {METADATA_KEY!r} metadata of an unknown format; re-export the model")
    if metadata.get("zones") != list(ZONES):
        raise ExportError(f"{source}: the model's zone order {metadata.get('zones')} is not {list(ZONES)}")
    return metadata


def data_config_for(metadata: dict[str, Any], data: DataConfig) -> DataConfig:
    """`data` (where the images are, how to treat missing ones) with the model's pixel preprocessing."""
    return dataclasses.replace(data, **{key: metadata["preprocessing"][key] for key in _PIXEL_KEYS})
