"""What `--mode models` lists about each backbone: parameters, sizes, weight sources and whether
they are in the local cache. Nothing is downloaded or loaded: the parameters are counted on an
untrained copy built on the meta device (no memory, no initialisation cost)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.models.zoo import SEED, family, get_backbone, hf_models, timm_models, torchvision_models, xrv_models


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    params: int  # of the backbone (the zone heads add channels x 30 + 30)
    channels: int
    native_size: int  # the input side its default weights were trained at
    sizes: str  # which other sides it takes
    sources: list[tuple[str, str, bool]]  # pretrained weights: description, where kept, whether there


def _native_and_rule(name: str) -> tuple[int, str]:
    kind = family(name)
    if kind == "torchvision":
        spec = torchvision_models.BACKBONES[name]
        return spec.native_size, (f"multiples of {spec.size_multiple}" if spec.size_multiple > 1
                                  else f">= {spec.min_size}")
    if kind == "xrv":
        return 224, ">= 32"
    if kind == "hf":
        pre = hf_models.preprocessing(name, True, "")
        config = hf_models.hf_config(name)
        return (pre.size if pre else config.image_size), f"multiples of {config.patch_size}"
    cfg = timm_models.pretrained_cfg(name)
    return (cfg.input_size[-1] if cfg else 224), ""  # known once built: its patch size, if any


def describe(name: str) -> BackboneInfo:
    """The --mode models row of backbone `name` (a seed name, timm:<name> or hf:<repo>)."""
    native, rule = _native_and_rule(name)
    with torch.device("meta"):
        backbone, channels = get_backbone(name, image_size=native)
    kind = family(name)
    if kind == "timm":
        rule = f"multiples of {backbone.patch_size}" if backbone.patch_size else ">= 32"
    sources = {"torchvision": lambda: torchvision_models.weights_sources(name),
               "xrv": xrv_models.weights_sources,
               "hf": lambda: hf_models.weights_sources(name),
               "timm": lambda: timm_models.weights_sources(name)}[kind]()
    return BackboneInfo(name, sum(p.numel() for p in backbone.parameters()), channels, native, rule, sources)


def listed(configured: str) -> list[str]:
    """The seed backbones, and the configured one when it is a timm: or hf: model."""
    return list(SEED) + ([] if configured in SEED else [configured])
