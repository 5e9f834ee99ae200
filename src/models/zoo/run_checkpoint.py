"""A checkpoint of this tool as a backbone's weights: [Model] pretrained_path = <run>/best_model.pth.

So a model trained on one data set becomes the starting point for another. The checkpoint's backbone
(its model's `backbone.*` weights) initialises the new backbone, which must be of the same
model_arch; the zone heads start afresh, as the new labels may be read differently. The input
normalisation its run used, recorded in its embedded config, is the weights' preprocessing.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from src.config.loader import config_from_text
from src.data.preprocess import normalization_stats
from src.models.zoo.common import Preprocessing
from src.utils.checkpoint import read_checkpoint
from src.utils.errors import CheckpointError, ConfigError, first_line

BACKBONE_PREFIX = "backbone."


def _peek(path: str) -> dict | None:
    """The checkpoint at `path` with its tensors memory-mapped (nothing is read but what is looked at),
    or None when it is not a file of this tool's checkpoint format."""
    if not Path(path).is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any file torch cannot read this way is some other kind of weights
        return None
    return state if isinstance(state, dict) and {"model", "arch", "config"} <= set(state) else None


def is_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint of this tool (rather than a state dict or a snapshot directory)."""
    return bool(path) and _peek(path) is not None


def check_weights(name: str, path: str) -> None:
    """Refuse, without reading its weights, a checkpoint of another architecture."""
    arch = _peek(path)["arch"]
    if arch != name:
        raise ConfigError(f"[Model] pretrained_path = {path}: a checkpoint of a {arch} model, not {name}; set "
                          f"[Model] model_arch = {arch}, or give a checkpoint of a {name} model")


def load_backbone(backbone: nn.Module, name: str, path: str, load_into=None) -> None:
    """Load the backbone weights of checkpoint `path` into `backbone` (an untrained `name`). `load_into`
    (torchvision's, which resizes a ViT's position embeddings to the input size) replaces load_state_dict."""
    check_weights(name, path)
    where = f"[Model] pretrained_path = {path}"
    try:
        model = read_checkpoint(path)["model"]
    except CheckpointError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    state = {k.removeprefix(BACKBONE_PREFIX): v for k, v in model.items() if k.startswith(BACKBONE_PREFIX)}
    if load_into is not None:
        load_into(backbone, state, where)
        return
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:  # a model trained at another input size: position embeddings of another shape
        raise ConfigError(f"{where}: its backbone does not fit this one ({first_line(exc)}); train with its "
                          "[Data] image_size") from None


def preprocessing(path: str) -> Preprocessing:
    """The normalisation and input size the checkpoint's run used, from its embedded config."""
    data = config_from_text(_peek(path)["config"], f"{path} (embedded config)").data
    mean, std = normalization_stats(data.normalization, data.normalization_mean, data.normalization_std)
    return Preprocessing(mean, std, data.image_size, f"the config embedded in {path}")
