"""The backbone zoo: every feature extractor a grey image [B, 1, H, W] -> feature map [B, C, h, w].

Names: the seed backbones (torchvision's resnet50, densenet121, vit_b_16; custom_cnn; chexnet
through torchxrayvision; raddino through transformers), timm:<name> and hf:<repo>. Each source
lives in its own module with the same four verbs: check_weights (cheap: finds, never loads),
build, preprocessing (what the weights expect) and weights_sources (for --mode models), and a
fifth, blocks (the backbone's stages or layers, for freezing and layer decay). A checkpoint of this
tool given as pretrained_path is a source for any of them (run_checkpoint). The libraries are
imported inside them: they cost seconds, which --help and custom_cnn need not pay.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from src.config.schema import Config, ModelConfig
from src.data.preprocess import normalization_stats
from src.models.zoo import hf_models, run_checkpoint, timm_models, torchvision_models, xrv_models
from src.models.zoo.common import Preprocessing, hub_offline
from src.utils.errors import ConfigError
from src.utils.logging import logger

SEED = (*torchvision_models.BACKBONES, "chexnet", "raddino")
PREFIXES = (timm_models.PREFIX, hf_models.PREFIX)


def family(name: str) -> str:
    """torchvision, xrv, hf or timm: which module builds backbone `name`."""
    if name in torchvision_models.BACKBONES:
        return "torchvision"
    if name == "chexnet":
        return "xrv"
    if name == "raddino" or (name.startswith(hf_models.PREFIX) and name != hf_models.PREFIX):
        return "hf"
    if name.startswith(timm_models.PREFIX) and name != timm_models.PREFIX:
        return "timm"
    raise ConfigError(f"[Model] model_arch = {name!r} is not allowed: expected one of {', '.join(SEED)}, "
                      f"timm:<name> or hf:<repo>")


def _check_weights_key(name: str, weights: str) -> None:
    if weights and family(name) != "xrv":
        raise ConfigError(f"[Model] pretrained_weights = {weights!r} applies to chexnet only; {name} takes its "
                          "weights from its name (timm:<name>.<tag>, hf:<repo>) or pretrained_path: leave it empty")


def check_weights(m: ModelConfig) -> None:
    """Refuse, before any data work and without loading them, weights [Model] asks for that cannot be
    had: one line naming the file or repo, where it was looked for, and the ways out."""
    name = m.model_arch
    _check_weights_key(name, m.pretrained_weights)
    kind = family(name)
    if run_checkpoint.is_checkpoint(m.pretrained_path):
        run_checkpoint.check_weights(name, m.pretrained_path)
    elif kind == "torchvision":
        torchvision_models.check_weights(name, m.pretrained, m.pretrained_path, hub_offline())
    elif kind == "xrv":
        xrv_models.check_weights(m.pretrained, m.pretrained_path, m.pretrained_weights)
    elif kind == "hf":
        hf_models.check_weights(name, m.pretrained, m.pretrained_path)
    else:
        timm_models.check_weights(name, m.pretrained, m.pretrained_path)


def get_backbone(name: str, pretrained: bool = False, pretrained_path: str = "", image_size: int = 224,
                 weights: str = "") -> tuple[nn.Module, int]:
    """Feature extractor `name` for square grey images of side `image_size`, and its channels.

    `pretrained_path` (a local file or snapshot directory) wins over `pretrained` (the source's
    own weights, `weights` naming them for chexnet). Weights are found, or refused, before the
    backbone itself is built.
    """
    _check_weights_key(name, weights)
    kind = family(name)
    if run_checkpoint.is_checkpoint(pretrained_path):
        backbone, channels = get_backbone(name, False, "", image_size, weights)
        load = ((lambda into, state, where: torchvision_models.load_into(into, state, where, image_size))
                if kind in ("torchvision", "xrv") else None)
        run_checkpoint.load_backbone(backbone, name, pretrained_path, load)
        return backbone, channels
    if kind == "torchvision":
        spec = torchvision_models.BACKBONES[name]
        if image_size < spec.min_size or image_size % spec.size_multiple:
            rule = f"a multiple of {spec.size_multiple}" if image_size % spec.size_multiple else f">= {spec.min_size}"
            raise ConfigError(f"[Data] image_size = {image_size} is not allowed for {name}: expected {rule}")
        return torchvision_models.build(name, pretrained, pretrained_path, image_size)
    if kind == "xrv":
        if image_size < 32:
            raise ConfigError(f"[Data] image_size = {image_size} is not allowed for chexnet: expected >= 32")
        return xrv_models.build(pretrained, pretrained_path, weights, image_size)
    if kind == "hf":
        return hf_models.build(name, pretrained, pretrained_path, image_size)
    return timm_models.build(name, pretrained, pretrained_path, image_size)


def backbone_blocks(name: str, backbone: nn.Module) -> list[list[str]]:
    """The parameter names of each block of backbone `name` (ResNet stages, DenseNet blocks, ViT and
    DINOv2 encoder layers, timm's stages or blocks), from input to output; the stem is in none."""
    kind = family(name)
    if kind == "torchvision":
        return torchvision_models.blocks(name, backbone)
    if kind == "xrv":
        return xrv_models.blocks(backbone)
    if kind == "hf":
        return hf_models.blocks(backbone)
    return timm_models.blocks(backbone)


def weights_preprocessing(m: ModelConfig) -> Preprocessing | None:
    """The input [Model]'s weights were trained on, from their own metadata; None when untrained."""
    name, kind = m.model_arch, family(m.model_arch)
    if run_checkpoint.is_checkpoint(m.pretrained_path):
        return run_checkpoint.preprocessing(m.pretrained_path)
    if kind == "torchvision":
        return torchvision_models.preprocessing(name) if (m.pretrained or m.pretrained_path) else None
    if kind == "xrv":
        return xrv_models.preprocessing(m.pretrained, m.pretrained_path, m.pretrained_weights)
    if kind == "hf":
        return hf_models.preprocessing(name, m.pretrained, m.pretrained_path)
    return timm_models.preprocessing(name, m.pretrained, m.pretrained_path)


def resolve_preprocessing(cfg: Config) -> Config:
    """`cfg` with [Data] normalization = weights replaced by the weights' own mean and std (custom),
    so the run's config, checkpoints and exports record exactly what the model read. A config that
    overrides the weights' normalisation or size says so in one line."""
    pre, data = weights_preprocessing(cfg.model), cfg.data
    arch = cfg.model.model_arch
    if data.normalization == "weights":
        mean, std = (pre.mean, pre.std) if pre else normalization_stats("weights", 0.0, 1.0)
        logger.info(f"input normalisation of {arch}: mean {mean:.6g}, std {std:.6g} "
                    f"({pre.source if pre else 'ImageNet grey, as it is trained from scratch'})")
        data = dataclasses.replace(data, normalization="custom", normalization_mean=mean, normalization_std=std)
    elif pre and normalization_stats(data.normalization, data.normalization_mean,
                                     data.normalization_std) != (pre.mean, pre.std):
        logger.warning(f"[Data] normalization = {data.normalization} overrides the input normalisation {arch}'s "
                       f"weights were trained with (mean {pre.mean:.6g}, std {pre.std:.6g}, {pre.source})")
    if pre and data.image_size != pre.size:
        logger.info(f"[Data] image_size = {data.image_size} overrides the {pre.size} px {arch}'s weights were "
                    "trained at")
    return dataclasses.replace(cfg, data=data)
