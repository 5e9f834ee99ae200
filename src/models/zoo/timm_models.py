"""timm:<name>: any timm model as a one-channel feature extractor.

CNNs give their last feature map; ViT-like models (those with prefix tokens) give their final
patch tokens on their grid, class and register tokens left out, at any size their patches tile
(position embeddings resampled by timm). Pretrained weights are the model's hub file, found in
huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE honoured) or downloaded there, or
[Model] pretrained_path (a state dict or safetensors file); timm adapts the RGB stem to one channel.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.models.zoo.common import Preprocessing, cached_hub_file, grey_stats, hub_file, hub_offline, hub_repo_dir
from src.models.zoo.torchvision_models import tokens_to_grid
from src.utils.errors import ConfigError, first_line

PREFIX = "timm:"
WEIGHTS_FILE = "model.safetensors"


def pretrained_cfg(name: str):
    import timm

    model = name.removeprefix(PREFIX)
    try:
        cfg = timm.models.get_pretrained_cfg(model)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise ConfigError(f"[Model] model_arch = {name}: {first_line(exc)}") from None
    if not timm.models.is_model(model.split(".")[0]):
        raise ConfigError(f"[Model] model_arch = {name}: timm has no model {model.split('.')[0]!r}; "
                          "`python -c 'import timm; print(timm.list_models())'` lists them")
    return cfg


def _hub_id(name: str) -> str:
    cfg = pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"[Model] pretrained = true: timm's {name.removeprefix(PREFIX)} has no weights on the hub; "
                          "set pretrained = false or pretrained_path = FILE")
    return cfg.hf_hub_id


def _fixes(repo: str) -> str:
    return (f"set [Model] pretrained = false, or pretrained_path = FILE (a state dict or .safetensors), or on a "
            f"machine with network run `hf download {repo} {WEIGHTS_FILE}` and copy its "
            f"{hub_repo_dir(repo).name} into this hub cache")


def check_weights(name: str, pretrained: bool, pretrained_path: str) -> None:
    """Refuse, without loading anything, an unknown model, a missing pretrained_path, or hub weights
    absent from the cache while HF_HUB_OFFLINE is set."""
    pretrained_cfg(name)
    if pretrained_path:
        if not Path(pretrained_path).is_file():
            raise ConfigError(f"[Model] pretrained_path = {pretrained_path}: file not found; give a state dict or "
                              ".safetensors file of the timm model, or leave it empty")
    elif pretrained:
        repo = _hub_id(name)
        if hub_offline() and cached_hub_file(repo, WEIGHTS_FILE) is None:
            hub_file(repo, WEIGHTS_FILE, f"timm weights of {name.removeprefix(PREFIX)}", _fixes(repo))


class TimmFeatures(nn.Module):
    """A timm model's forward_features laid out as [B, C, h, w]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefix_tokens = getattr(model, "num_prefix_tokens", None)  # None: a CNN
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        self.patch_size = patch[0] if isinstance(patch, (list, tuple)) else patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if self.prefix_tokens is None:
            return features
        return tokens_to_grid(features, (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size))


def build(name: str, pretrained: bool, pretrained_path: str, image_size: int) -> tuple[nn.Module, int]:
    """Backbone timm:<name> for `image_size` inputs and its channels."""
    import timm

    check_weights(name, pretrained, pretrained_path)
    file = pretrained_path
    if pretrained and not file:
        repo = _hub_id(name)
        file = str(hub_file(repo, WEIGHTS_FILE, f"timm weights of {name.removeprefix(PREFIX)}", _fixes(repo)))
    kwargs = {"in_chans": 1, "num_classes": 0, "pretrained": bool(file)}
    if file:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    model_name = name.removeprefix(PREFIX)
    try:
        try:  # ViT-like models take the input size and resample their position embeddings to it
            model = timm.create_model(model_name, img_size=image_size, **kwargs)
        except TypeError:
            model = timm.create_model(model_name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a file of another model or format: one remedy
        raise ConfigError(f"[Model] model_arch = {name}: {file or 'the model'} cannot be loaded by timm "
                          f"({first_line(exc)})") from None
    backbone = TimmFeatures(model)
    if backbone.patch_size and image_size % backbone.patch_size:
        raise ConfigError(f"[Data] image_size = {image_size} is not allowed for {name}: expected a multiple of "
                          f"{backbone.patch_size}")
    return backbone, model.num_features


def blocks(backbone: TimmFeatures) -> list[list[str]]:
    """The parameter names of each of timm's coarse parameter groups but the first (the stem): the stages
    of a CNN, the blocks of a ViT (its final norm with the last), as timm groups them for layer decay."""
    from timm.models import group_parameters

    groups = group_parameters(backbone.model, backbone.model.group_matcher(coarse=True))
    return [[f"model.{name}" for name in groups[k]] for k in sorted(groups)[1:]]


def preprocessing(name: str, pretrained: bool, pretrained_path: str) -> Preprocessing | None:
    """What the model's pretrained weights were trained on (timm's pretrained_cfg); None untrained."""
    cfg = pretrained_cfg(name)
    if not (pretrained or pretrained_path) or cfg is None:
        return None
    mean, std = grey_stats(cfg.mean, cfg.std)
    return Preprocessing(mean, std, cfg.input_size[-1], f"timm's pretrained_cfg of {name.removeprefix(PREFIX)}")


def weights_sources(name: str) -> list[tuple[str, str, bool]]:
    """(description, where it is kept, whether it is there) of the hub weights of `name`."""
    cfg = pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return []
    repo = cfg.hf_hub_id
    return [(f"hub {repo}", str(hub_repo_dir(repo)), cached_hub_file(repo, WEIGHTS_FILE) is not None)]
