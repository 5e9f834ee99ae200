"""torchvision backbones (resnet50, densenet121, vit_b_16) and the small custom_cnn.

They keep torchvision's parameter names (minus the classifier), so a state dict saved from a
torchvision model loads into them; their first convolution takes one channel (see grey_conv).
ImageNet weights come through torchvision's hub cache, TORCH_HOME/hub/checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from src.models.zoo.common import Preprocessing, blocks_by_prefix, grey_conv, grey_stats
from src.utils.errors import ConfigError, first_line

# Parameters of the torchvision classifiers: in their state dicts, not in our backbones.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "heads.")


# torchvision is imported where a torchvision model is built: importing it costs seconds (it pulls in
# torch._dynamo), which custom_cnn runs, sweep runs in fresh processes and the CLI's start-up need not pay.

def _resnet50(image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50()
    model.conv1 = grey_conv(model.conv1)
    return nn.Sequential(
        OrderedDict((name, m) for name, m in model.named_children() if name not in ("avgpool", "fc"))
    )


def _densenet121(image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.densenet121()
    model.features.conv0 = grey_conv(model.features.conv0)
    # torchvision applies this ReLU in forward(), after the last BatchNorm of `features`.
    return nn.Sequential(OrderedDict(features=model.features, relu=nn.ReLU(inplace=True)))


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, prefix + h*w, D] tokens -> [B, D, h, w] patch grid; the leading class/register tokens
    have no position and are dropped."""
    patches = tokens[:, tokens.shape[1] - grid[0] * grid[1]:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


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
        self.conv_proj = grey_conv(vit.conv_proj)
        self.class_token = vit.class_token
        self.encoder = vit.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.conv_proj(x)
        b, d, h, w = grid.shape
        tokens = torch.cat([self.class_token.expand(b, -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        return tokens_to_grid(self.encoder(tokens), (h, w))

    def cam_target(self, image_size: tuple[int, int]) -> tuple[nn.Module, Callable]:
        """Grad-CAM's layer (the last encoder block) and how its tokens lie on the grid."""
        grid = (image_size[0] // self.patch_size, image_size[1] // self.patch_size)
        return self.encoder.layers[-1], partial(tokens_to_grid, grid=grid)


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
    native_size: int = 224


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(_resnet50, 2048, "ResNet50_Weights.IMAGENET1K_V2"),
    # Its fourth pooling stage needs a 2x2 map, hence 32 px at least.
    "densenet121": BackboneSpec(_densenet121, 1024, "DenseNet121_Weights.IMAGENET1K_V1", min_size=32),
    "custom_cnn": BackboneSpec(_custom_cnn, 512),
    "vit_b_16": BackboneSpec(ViTFeatures, 768, "ViT_B_16_Weights.IMAGENET1K_V1", size_multiple=16),
}


# The blocks of each backbone from input to output (see src/models/freeze.py): a DenseNet's dense block
# with the transition before it, the last with the final norm; a ViT's encoder layers, the last with the
# final layer norm. What comes before the first block (the stem, the patch embedding) is in none.
DENSENET_BLOCKS = [("features.denseblock1",), ("features.transition1", "features.denseblock2"),
                   ("features.transition2", "features.denseblock3"),
                   ("features.transition3", "features.denseblock4", "features.norm5")]
_BLOCKS = {"resnet50": [(f"layer{i}",) for i in range(1, 5)], "densenet121": DENSENET_BLOCKS,
           "custom_cnn": [(str(i),) for i in range(5)]}


def blocks(name: str, backbone: nn.Module) -> list[list[str]]:
    """The parameter names of each block of backbone `name`, from input to output."""
    if name == "vit_b_16":
        layers = [f"encoder.layers.{child}" for child, _ in backbone.encoder.layers.named_children()]
        return blocks_by_prefix(backbone, [(layer,) for layer in layers[:-1]] + [(layers[-1], "encoder.ln")])
    return blocks_by_prefix(backbone, _BLOCKS[name])


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
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


def _weights_file(weights: str) -> Path:
    """Where torchvision keeps (or would download) `weights`: TORCH_HOME/hub/checkpoints/<url's file>."""
    import torchvision

    url = torchvision.models.get_weight(weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _missing(name: str, weights: str, file: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"[Model] pretrained = true: ImageNet weights {weights} for {name}: {file} {problem}; set [Model] "
        f"pretrained = false, or pretrained_path = FILE.pth (a local state dict), or put {file.name} in {file.parent}"
    )


def check_weights(name: str, pretrained: bool, pretrained_path: str, offline: bool) -> None:
    """Refuse, without loading anything, weights that cannot be had: no ImageNet weights for `name`, or
    not in the cache while `offline`."""
    if pretrained_path or not pretrained:
        return
    spec = BACKBONES[name]
    if spec.weights is None:
        raise ConfigError(f"[Model] pretrained = true: {name} has no ImageNet weights; set pretrained = false "
                          "or pretrained_path = FILE.pth")
    file = _weights_file(spec.weights)
    if offline and not file.is_file():
        raise _missing(name, spec.weights, file, "is missing and HF_HUB_OFFLINE=1 forbids downloading it")


def _imagenet_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """State dict of torchvision's RGB model with `weights`, from the hub cache, else downloaded there."""
    import torchvision

    file = _weights_file(weights)
    try:
        return torchvision.models.get_model(name, weights=weights, progress=False).state_dict()
    except Exception as exc:  # noqa: BLE001 - no network, refused proxy, bad hash, truncated file: one remedy
        problem = "cannot be loaded" if file.is_file() else "is missing and could not be downloaded"
        raise _missing(name, weights, file, f"{problem} ({first_line(exc)})") from None


def load_into(backbone: nn.Module, state: dict[str, torch.Tensor], where: str, image_size: int) -> None:
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


def build(name: str, pretrained: bool, pretrained_path: str, image_size: int) -> tuple[nn.Module, int]:
    """Backbone `name` and its channels; `pretrained_path` (a state dict file) wins over `pretrained`.
    Weights are found, or refused, before the backbone itself is built."""
    spec = BACKBONES[name]
    check_weights(name, pretrained, pretrained_path, offline=False)
    state, where = None, ""
    if pretrained_path:
        state, where = read_state_dict(pretrained_path), f"[Model] pretrained_path = {pretrained_path}"
    elif pretrained:
        state, where = _imagenet_state_dict(name, spec.weights), f"ImageNet weights {spec.weights}"
    backbone = spec.build(image_size)
    if state is not None:
        load_into(backbone, state, where, image_size)
    return backbone, spec.channels


def preprocessing(name: str) -> Preprocessing | None:
    """What torchvision's ImageNet weights of `name` were trained on (their transforms), or None."""
    spec = BACKBONES[name]
    if spec.weights is None:
        return None
    import torchvision

    transforms = torchvision.models.get_weight(spec.weights).transforms()
    mean, std = grey_stats(transforms.mean, transforms.std)
    return Preprocessing(mean, std, transforms.crop_size[0], f"torchvision's {spec.weights} transforms")


def weights_sources(name: str) -> list[tuple[str, str, bool]]:
    """(description, where it is kept, whether it is there) of each cached source of weights of `name`."""
    spec = BACKBONES[name]
    if spec.weights is None:
        return []
    file = _weights_file(spec.weights)
    return [(f"torchvision {spec.weights}", str(file), file.is_file())]
