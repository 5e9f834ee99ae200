"""Which weights a run trains ([Model] freeze) and how deep each lies below the zone head.

A backbone is a stem followed by blocks (ResNet stages, DenseNet blocks, ViT and DINOv2 encoder
layers, timm's stages or blocks; src/models/zoo's backbone_blocks names them per family). A weight's
depth counts from the head down: 0 the zone head, 1 the backbone's last block, ..., L its first
block, L + 1 the stem. freeze = backbone freezes every depth >= 1, all_but_last:N every depth > N.
Frozen weights get no gradient, and the modules made only of frozen weights stay in eval mode
(CSIModel.train), so their BatchNorm statistics never move: a frozen part computes what its
weights computed before training.
"""

from __future__ import annotations

import torch
from torch import nn

from src.config.schema import Config
from src.models.factory import CSIModel, build_architecture
from src.models.zoo import backbone_blocks
from src.utils.errors import ConfigError

ALL_BUT_LAST = "all_but_last:"


def trainable_blocks(spec: str) -> int | None:
    """How many of the backbone's last blocks `spec` trains: None all of them (none), 0 (backbone), N."""
    if spec == "none":
        return None
    if spec == "backbone":
        return 0
    return int(spec.removeprefix(ALL_BUT_LAST))  # the schema checked it is a whole number >= 1


def parameter_depths(model: CSIModel) -> dict[str, int]:
    """Each parameter's depth below the head (see the module docstring), by its name in `model`."""
    blocks = backbone_blocks(model.arch_name, model.backbone)
    in_block = {f"backbone.{name}": len(blocks) - i for i, block in enumerate(blocks) for name in block}
    return {name: in_block.get(name, len(blocks) + 1) if name.startswith("backbone.") else 0
            for name, _ in model.named_parameters()}


def frozen_parameters(model: CSIModel, spec: str) -> set[str]:
    """The names of the parameters [Model] freeze = `spec` freezes in `model`."""
    keep = trainable_blocks(spec)
    if keep is None:
        return set()
    blocks = len(backbone_blocks(model.arch_name, model.backbone))
    if keep > blocks:
        raise ConfigError(f"[Model] freeze = {spec} is not allowed for {model.arch_name}: it has {blocks} blocks, "
                          f"so expected all_but_last:1 to all_but_last:{blocks}, or none")
    return {name for name, depth in parameter_depths(model).items() if depth > keep}


def check_freeze(cfg: Config) -> None:
    """Refuse, before any data work, all_but_last:N beyond the backbone's blocks (counted on an untrained
    copy built on the meta device: no memory, no weights read)."""
    if trainable_blocks(cfg.model.freeze):
        with torch.device("meta"):
            frozen_parameters(build_architecture(cfg), cfg.model.freeze)


def _wholly_frozen(module: nn.Module, frozen: set[str], prefix: str = "") -> list[str]:
    """The outermost submodules whose parameters are all frozen."""
    names = [prefix + name for name, _ in module.named_parameters()]
    if prefix and names and all(name in frozen for name in names):
        return [prefix.removesuffix(".")]
    return [found for child, sub in module.named_children()
            for found in _wholly_frozen(sub, frozen, f"{prefix}{child}.")]


def freeze(model: CSIModel, spec: str) -> None:
    """Freeze what `spec` (none, backbone, all_but_last:N) freezes in `model`, and unfreeze what an earlier
    call froze and this one does not (a parameter set aside for another reason, such as one no step
    trains under DDP, src/training/parallel.py, stays as it is)."""
    frozen = frozen_parameters(model, spec)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
        elif name in model.frozen_parameters:
            param.requires_grad_(True)
    model.frozen_parameters = frozenset(frozen)
    model.frozen_modules = tuple(_wholly_frozen(model, frozen))
    model.train(model.training)  # a model in training mode puts its newly frozen modules in eval mode


def layer_lr_scales(model: CSIModel, layer_decay: float, head_lr_multiplier: float) -> dict[str, float]:
    """Each parameter's learning-rate multiplier: head_lr_multiplier for the zone head, layer_decay ** depth
    below it (the last block layer_decay, the stem layer_decay ** (L + 1)), as BEiT and timm decay layers."""
    return {name: head_lr_multiplier if depth == 0 else layer_decay ** depth
            for name, depth in parameter_depths(model).items()}
