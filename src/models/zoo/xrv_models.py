"""chexnet: DenseNet121 with torchxrayvision's chest X-ray weights ([Model] pretrained_weights).

torchxrayvision keeps each weights file under its own name (the release URL's) in its cache,
~/.torchxrayvision/models_data/, and downloads it there when missing. Its models read one channel
in its intensity convention, [-1024, 1024], at 224 px: for our 0..1 images that is (x - 0.5) * 2048.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import OrderedDict
from pathlib import Path

from torch import nn

from src.models.zoo.common import Preprocessing, blocks_by_prefix, hub_offline
from src.models.zoo.torchvision_models import DENSENET_BLOCKS, load_into, read_state_dict
from src.utils.errors import ConfigError, first_line

DEFAULT_WEIGHTS = "densenet121-res224-all"
# torchxrayvision's intensity range [-1024, 1024] for a 0..1 image: mean 0.5, std 1/2048.
XRV_MEAN, XRV_STD = 0.5, 1 / 2048
CHANNELS = 1024


def weight_names() -> list[str]:
    """torchxrayvision's DenseNet121 weights, e.g. densenet121-res224-all, -chex, -nih, -mimic_ch."""
    import torchxrayvision

    return [k for k in torchxrayvision.models.model_urls if k.startswith("densenet121-")]


def _weights(weights: str) -> str:
    weights = weights or DEFAULT_WEIGHTS
    allowed = weight_names()
    if weights not in allowed:
        raise ConfigError(f"[Model] pretrained_weights = {weights!r} is not allowed for chexnet: expected one of "
                          f"{', '.join(allowed)}")
    return weights


def weights_file(weights: str) -> Path:
    """Where torchxrayvision keeps (or would download) `weights`."""
    import torchxrayvision

    url = torchxrayvision.models.model_urls[_weights(weights)]["weights_url"]
    return Path(os.path.expanduser(torchxrayvision.utils.get_cache_dir())) / os.path.basename(url)


def _missing(weights: str, file: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"[Model] pretrained = true: torchxrayvision weights {weights} for chexnet: {file} {problem}; set [Model] "
        f"pretrained = false, or pretrained_path = FILE.pth (a local state dict), or put {file.name} in {file.parent}")


def check_weights(pretrained: bool, pretrained_path: str, weights: str) -> None:
    """Refuse, without loading anything, unknown weights, or weights not cached while HF_HUB_OFFLINE is set."""
    weights = _weights(weights)
    if pretrained and not pretrained_path:
        file = weights_file(weights)
        if hub_offline() and not file.is_file():
            raise _missing(weights, file, "is missing and HF_HUB_OFFLINE=1 forbids downloading it")


def _features(model: nn.Module) -> nn.Module:
    # torchxrayvision applies this ReLU after `features` too (features2).
    return nn.Sequential(OrderedDict(features=model.features, relu=nn.ReLU(inplace=True)))


def build(pretrained: bool, pretrained_path: str, weights: str, image_size: int) -> tuple[nn.Module, int]:
    """chexnet's backbone (torchxrayvision's DenseNet121 without its classifier) and its channels."""
    import torchxrayvision

    check_weights(pretrained, pretrained_path, weights)
    if pretrained and not pretrained_path:
        weights = _weights(weights)
        file = weights_file(weights)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its "Downloading weights..." prints
                model = torchxrayvision.models.DenseNet(weights=weights)
        except Exception as exc:  # noqa: BLE001 - no network, truncated or foreign file: one remedy
            problem = "cannot be loaded" if file.is_file() else "is missing and could not be downloaded"
            raise _missing(weights, file, f"{problem} ({first_line(exc)})") from None
        return _features(model), CHANNELS
    backbone = _features(torchxrayvision.models.DenseNet())
    if pretrained_path:
        state = {k: v for k, v in read_state_dict(pretrained_path).items() if k != "op_threshs"}
        load_into(backbone, state, f"[Model] pretrained_path = {pretrained_path}", image_size)
    return backbone, CHANNELS


def blocks(backbone: nn.Module) -> list[list[str]]:
    """The parameter names of each dense block (with its transition, the last with the final norm)."""
    return blocks_by_prefix(backbone, DENSENET_BLOCKS)


def preprocessing(pretrained: bool, pretrained_path: str, weights: str) -> Preprocessing | None:
    """torchxrayvision's convention for its weights; None for an untrained model."""
    if not (pretrained or pretrained_path):
        return None
    import torchxrayvision

    size = torchxrayvision.models.model_urls[_weights(weights)].get("input_resolution", 224)
    return Preprocessing(XRV_MEAN, XRV_STD, size, "torchxrayvision's intensity convention [-1024, 1024]")


def weights_sources() -> list[tuple[str, str, bool]]:
    """(description, where it is kept, whether it is there) of each of torchxrayvision's weights."""
    return [(f"torchxrayvision {name}", str(weights_file(name)), weights_file(name).is_file())
            for name in weight_names()]
