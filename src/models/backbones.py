"""Feature extractors: a grey image [B, 1, H, W] -> an unpooled feature map [B, C, h, w].

The torchvision backbones keep torchvision's parameter names (minus the classifier), so a
state dict saved from a torchvision model loads into them. Their first convolution takes one
channel; its weights are the RGB weights summed over the colour axis, which computes exactly
what the RGB network computes on the grey image repeated into three channels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from src.utils.errors import ConfigError, first_line

# Parameters of the torchvision classifiers: in their state dicts, not in our backbones.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "heads.")


def _grey_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """`conv` taking one input channel, with its weights summed over the input channels."""
    grey = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    return grey


# torchvision is imported where a torchvision model is built: importing it costs seconds (it pulls in
# torch._dynamo), which custom_cnn runs, sweep runs in fresh processes and the CLI's start-up need not pay.

def _resnet50(image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50()
    model.conv1 = _grey_conv(model.conv1)
    return nn.Sequential(
        OrderedDict((name, m) for name, m in model.named_children() if name not in ("avgpool", "fc"))
    )


def _densenet121(image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.densenet121()
    model.features.conv0 = _grey_conv(model.features.conv0)
    # torchvision applies this ReLU in forward(), after the last BatchNorm of `features`.
    return nn.Sequential(OrderedDict(features=model.features, relu=nn.ReLU(inplace=True)))


class ViTFeatures(nn.Module):
    """ViT-B/16 encoder returning its patch tokens laid out on the [h, w] patch grid.

    The class token takes part in attention but is left out of the output: it has no position,
    and the zone heads pool by position.
    """

    def __init__(self, image_size: int) -> None:
        import torchvision

        super().__init__()
        vit = torchvision.models.vit_b_16(image_size=image_size)
        self.patch_size = vit.patch_size
        self.conv_proj = _grey_conv(vit.conv_proj)
        self.class_token = vit.class_token
        self.encoder = vit.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.conv_proj(x)
        b, d, h, w = grid.shape
        tokens = torch.cat([self.class_token.expand(b, -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        patches = self.encoder(tokens)[:, 1:]
        return patches.transpose(1, 2).reshape(b, d, h, w)


def _custom_cnn(image_size: int) -> nn.Module:
    """Five stride-2 conv-BN-ReLU blocks: output stride 32 like the ResNet, a fraction of the cost."""
    blocks, in_channels = [], 1
    for width in (32, 64, 128, 256, 512):
        blocks.append(nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ))
        in_channels = width
    return nn.Sequential(*blocks)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[int], nn.Module]  # image side -> randomly initialised 1-channel backbone
    channels: int
    weights: str | None = None  # torchvision's name of the ImageNet weights of the model of that name
    min_size: int = 16
    size_multiple: int = 1


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(_resnet50, 2048, "ResNet50_Weights.IMAGENET1K_V2"),
    # Its fourth pooling stage needs a 2x2 map, hence 32 px at least.
    "densenet121": BackboneSpec(_densenet121, 1024, "DenseNet121_Weights.IMAGENET1K_V1", min_size=32),
    "custom_cnn": BackboneSpec(_custom_cnn, 512),
    "vit_b_16": BackboneSpec(ViTFeatures, 768, "ViT_B_16_Weights.IMAGENET1K_V1", size_multiple=16),
}


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    where = f"[Model] pretrained_path = {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: file not found; give a state dict saved with torch.save, or leave it empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many types; all mean "not a state dict"
        raise ConfigError(f"{where}: cannot be read as a state dict ({first_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    return state


def _imagenet_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """State dict of torchvision's RGB model with `weights`, from the hub cache, else downloaded there."""
    import torchvision

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    file = cache / Path(urlparse(torchvision.models.get_weight(weights).url).path).name
    try:
        return torchvision.models.get_model(name, weights=weights, progress=False).state_dict()
    except Exception as exc:  # noqa: BLE001 - no network, refused proxy, bad hash, truncated file: one remedy
        problem = "cannot be loaded" if file.is_file() else "is missing and could not be downloaded"
        raise ConfigError(
            f"[Model] pretrained = true: ImageNet weights {weights} for {name}: {file} {problem} "
            f"({first_line(exc)}); set [Model] pretrained = false, or pretrained_path = FILE.pth "
            f"(a local state dict), or put {file.name} in {cache}"
        ) from None


def _load(backbone: nn.Module, state: dict[str, torch.Tensor], where: str, image_size: int) -> None:
    """Load a torchvision model's or one of our backbones' state dict into `backbone`."""
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    pos = "encoder.pos_embedding"
    if pos in state and pos in own and state[pos].shape != own[pos].shape:
        from torchvision.models import vision_transformer

        try:
            state = vision_transformer.interpolate_embeddings(image_size, backbone.patch_size, state)
        except ValueError as exc:
            raise ConfigError(f"{where}: {pos} cannot be resized to {image_size} px ({exc})") from None
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConfigError(
            f"{where}: parameter names do not match this backbone: missing {missing[:3]} "
            f"(of {len(missing)}), unexpected {unexpected[:3]} (of {len(unexpected)})"
        )
    for k, v in state.items():
        if v.ndim == own[k].ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1:  # RGB first conv
            state[k] = v.sum(dim=1, keepdim=True)
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            f"{where}: {len(wrong)} parameter shapes do not match this backbone, first {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} expected"
        )
    backbone.load_state_dict(state)


def get_backbone(
    name: str, pretrained: bool = False, pretrained_path: str = "", image_size: int = 224
) -> tuple[nn.Module, int]:
    """Feature extractor `name` for square grey images of side `image_size`, and its channels.

    `pretrained_path` (a state dict file) wins over `pretrained` (torchvision's ImageNet weights).
    Weights are found, or refused, before the backbone itself is built.
    """
    if name not in BACKBONES:
        raise ConfigError(f"[Model] model_arch = {name!r} is not allowed: expected one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if image_size < spec.min_size or image_size % spec.size_multiple:
        rule = f"a multiple of {spec.size_multiple}" if image_size % spec.size_multiple else f">= {spec.min_size}"
        raise ConfigError(f"[Data] image_size = {image_size} is not allowed for {name}: expected {rule}")
    state, where = None, ""
    if pretrained_path:
        state, where = _read_state_dict(pretrained_path), f"[Model] pretrained_path = {pretrained_path}"
    elif pretrained:
        if spec.weights is None:
            raise ConfigError(
                f"[Model] pretrained = true: {name} has no ImageNet weights; set pretrained = false "
                "or pretrained_path = FILE.pth"
            )
        state, where = _imagenet_state_dict(name, spec.weights), f"ImageNet weights {spec.weights}"
    backbone = spec.build(image_size)
    if state is not None:
        _load(backbone, state, where, image_size)
    return backbone, spec.channels
