"""Hugging Face transformers vision backbones: raddino (Microsoft's RAD-DINO) and any hf:<repo>.

RAD-DINO is a DINOv2 ViT-B/14 trained on chest X-rays, built with transformers from its own
config. Weights come from huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE honoured), downloaded
there when allowed, or from [Model] pretrained_path naming a local snapshot directory
(config.json + model.safetensors, as copied from a machine with network). The features are the
final hidden state's patch tokens on their grid; class and register tokens are left out.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from src.models.zoo.common import (
    Preprocessing,
    blocks_by_prefix,
    cached_hub_file,
    grey_conv,
    grey_stats,
    hub_cache_dir,
    hub_file,
    hub_offline,
    hub_repo_dir,
)
from src.models.zoo.torchvision_models import tokens_to_grid
from src.utils.errors import ConfigError, first_line

RADDINO_REPO = "microsoft/rad-dino"
PREFIX = "hf:"
WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE = "model.safetensors", "config.json", "preprocessor_config.json"
# RAD-DINO's architecture (its config.json), to build it untrained where its snapshot is not cached.
RADDINO_CONFIG = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layerscale_value": 1.0,
                  "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False}


def repo_of(name: str) -> str:
    """The hub repository of backbone `name` (raddino or hf:<repo>)."""
    return RADDINO_REPO if name == "raddino" else name.removeprefix(PREFIX)


def _fixes(repo: str) -> str:
    return (f"set [Model] pretrained = false, or pretrained_path = DIR (a local snapshot directory with "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}), or on a machine with network run `hf download {repo}` and copy its "
            f"{hub_repo_dir(repo).name} into this hub cache")


class HFFeatures(nn.Module):
    """A transformers vision model returning its final patch tokens laid out on the [h, w] grid."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        patch = model.config.patch_size
        self.patch_size = patch[0] if isinstance(patch, (list, tuple)) else patch
        # ViT interpolates its position embeddings only when asked; DINOv2 always does.
        accepted = inspect.signature(model.forward).parameters
        self.kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in accepted else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return tokens_to_grid(self.model(pixel_values=x, **self.kwargs).last_hidden_state, grid)

    def cam_target(self, image_size: tuple[int, int]) -> tuple[nn.Module, Callable]:
        """Grad-CAM's layer (the last encoder block) and how its tokens lie on the grid."""
        grid = (image_size[0] // self.patch_size, image_size[1] // self.patch_size)
        return self.model.encoder.layer[-1], partial(tokens_to_grid, grid=grid)


def _grey(model: nn.Module, source: str) -> nn.Module:
    """`model` with a one-channel patch embedding (see grey_conv)."""
    patches = getattr(getattr(model, "embeddings", None), "patch_embeddings", None)
    if not isinstance(getattr(patches, "projection", None), nn.Conv2d):
        raise ConfigError(f"[Model] model_arch: {source} has no convolutional patch embedding "
                          "(embeddings.patch_embeddings.projection); use a ViT-like vision backbone")
    patches.projection = grey_conv(patches.projection)
    patches.num_channels = model.config.num_channels = 1
    return model


def _snapshot_dir(path: str) -> Path:
    directory = Path(path)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise ConfigError(f"[Model] pretrained_path = {path}: not a snapshot directory, {', '.join(missing)} missing; "
                          f"give a directory holding {CONFIG_FILE} and {WEIGHTS_FILE} (a copy of {RADDINO_REPO}'s or "
                          "another transformers model's files)")
    return directory


def check_weights(name: str, pretrained: bool, pretrained_path: str) -> None:
    """Refuse, without loading anything, weights that cannot be had: a pretrained_path that is no
    snapshot, or a repo absent from the hub cache while HF_HUB_OFFLINE is set."""
    if pretrained_path:
        _snapshot_dir(pretrained_path)
        return
    repo = repo_of(name)
    needed = [WEIGHTS_FILE] if pretrained else ([] if name == "raddino" else [CONFIG_FILE])
    for file in needed:
        if hub_offline() and cached_hub_file(repo, file) is None:
            hub_file(repo, file, f"{name} weights", _fixes(repo))  # raises the one-line error


def build(name: str, pretrained: bool, pretrained_path: str, image_size: int) -> tuple[nn.Module, int]:
    """Backbone `name` (raddino or hf:<repo>) and its channels (the hidden size)."""
    import transformers

    check_weights(name, pretrained, pretrained_path)
    transformers.utils.logging.disable_progress_bar()  # its per-tensor "Loading weights" bar
    repo = repo_of(name)
    if pretrained_path or pretrained:
        source = str(_snapshot_dir(pretrained_path)) if pretrained_path else repo
        if not pretrained_path:  # the files from_pretrained reads, through the same cache, with our error
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                hub_file(repo, file, f"{name} weights", _fixes(repo))
        try:
            model = transformers.AutoModel.from_pretrained(source, cache_dir=hub_cache_dir(), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - a config or weights file transformers cannot read
            raise ConfigError(f"[Model] {name}: {source} cannot be loaded by transformers "
                              f"({first_line(exc)})") from None
    else:
        model = transformers.AutoModel.from_config(hf_config(name))
    _check_size(name, model, image_size)
    return HFFeatures(_grey(model, source if pretrained_path or pretrained else repo)), model.config.hidden_size


def blocks(backbone: HFFeatures) -> list[list[str]]:
    """The parameter names of each layer of the transformer's layer stack (its largest ModuleList:
    encoder.layer in DINOv2, layers in transformers 5's ViT), the last with what follows the stack (the
    final layer norm)."""
    stacks = [(name, module) for name, module in backbone.named_modules() if isinstance(module, nn.ModuleList)]
    stack, layers = max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    found = blocks_by_prefix(backbone, [(f"{stack}.{child}",) for child, _ in layers.named_children()])
    names = [name for name, _ in backbone.named_parameters()]
    found[-1] += names[names.index(found[-1][-1]) + 1:]
    return found


def hf_config(name: str):
    """The architecture of `name` for an untrained model: its cached config.json, else RAD-DINO's."""
    import transformers

    repo = repo_of(name)
    cached = cached_hub_file(repo, CONFIG_FILE)
    if cached is None and name == "raddino":
        return transformers.AutoConfig.for_model(**RADDINO_CONFIG)
    path = cached or hub_file(repo, CONFIG_FILE, f"{name} config", _fixes(repo))
    return transformers.AutoConfig.from_pretrained(str(path.parent))


def _check_size(name: str, model: nn.Module, image_size: int) -> None:
    patch = model.config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    if image_size % patch:
        raise ConfigError(f"[Data] image_size = {image_size} is not allowed for {name}: expected a multiple of {patch}")


def preprocessing(name: str, pretrained: bool, pretrained_path: str) -> Preprocessing | None:
    """What the weights were trained on, from their preprocessor_config.json; None without one."""
    if pretrained_path:
        file: Path | None = Path(pretrained_path) / PREPROCESSOR_FILE
        file = file if file.is_file() else None
    elif pretrained:
        file = cached_hub_file(repo_of(name), PREPROCESSOR_FILE)
    else:
        return None
    if file is None:
        return None
    meta = json.loads(file.read_text())
    size = meta.get("crop_size") if meta.get("do_center_crop", True) and meta.get("crop_size") else meta.get("size")
    side = size if isinstance(size, int) else (size or {}).get("height") or (size or {}).get("shortest_edge")
    # Pixels are rescaled to 0..1 first (rescale_factor 1/255), as our images are.
    mean, std = grey_stats(meta.get("image_mean", [0.5]), meta.get("image_std", [0.5]))
    return Preprocessing(mean, std, int(side or 224), f"{file.name} of {pretrained_path or repo_of(name)}")


def weights_sources(name: str) -> list[tuple[str, str, bool]]:
    """(description, where it is kept, whether it is there) of the hub weights of `name`."""
    repo = repo_of(name)
    return [(f"hub {repo}", str(hub_repo_dir(repo)), cached_hub_file(repo, WEIGHTS_FILE) is not None)]
