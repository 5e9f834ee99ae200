"""What every backbone source shares: the grey first layer, the preprocessing its weights expect,
and the one-line error for weights that are requested but absent."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from src.utils.errors import ConfigError, first_line


@dataclass(frozen=True)
class Preprocessing:
    """The input the weights were trained on, for a 0..1 grey image: (x - mean) / std at size x size.

    `source` says where it was read (preprocessor_config.json, timm's pretrained_cfg, ...)."""

    mean: float
    std: float
    size: int
    source: str


def grey_stats(means: Sequence[float], stds: Sequence[float]) -> tuple[float, float]:
    """One channel's (mean, std) for RGB statistics: their averages (exact when the channels agree)."""
    return sum(means) / len(means), sum(stds) / len(stds)


def grey_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """`conv` taking one input channel, with its weights summed over the input channels: on a grey
    image it computes exactly what `conv` computes on that image repeated into every channel."""
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    return grey


def blocks_by_prefix(backbone: nn.Module, prefixes: Sequence[Sequence[str]]) -> list[list[str]]:
    """The parameter names of each block, a block being the modules named by one entry of `prefixes`."""
    names = [name for name, _ in backbone.named_parameters()]
    blocks = [[n for n in names if any(n.startswith(f"{p}.") for p in block)] for block in prefixes]
    if not all(blocks):  # a prefix that matches nothing: the family's layout is not the one described
        raise ValueError(f"no parameters under {prefixes[[bool(b) for b in blocks].index(False)]}")
    return blocks


def hub_offline() -> bool:
    """Whether huggingface_hub may not download (HF_HUB_OFFLINE set true, as the hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache as the environment names it now (the hub reads it once, at import):
    HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")).expanduser() / "hub"


def hub_repo_dir(repo: str) -> Path:
    """Where huggingface_hub keeps `repo` in its cache."""
    return hub_cache_dir() / f"models--{repo.replace('/', '--')}"


def cached_hub_file(repo: str, filename: str) -> Path | None:
    """`filename` of `repo`'s main revision in the hub cache, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
    return Path(found) if isinstance(found, str) else None


def hub_file(repo: str, filename: str, what: str, fixes: str) -> Path:
    """`filename` of `repo` from the hub cache, else downloaded into it unless HF_HUB_OFFLINE; a
    ConfigError naming the repo, the file, the cache and `fixes` when neither works."""
    from huggingface_hub import hf_hub_download

    cache = hub_cache_dir()
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache, local_files_only=hub_offline()))
    except Exception as exc:  # noqa: BLE001 - offline, no network, unknown repo, gated repo: one remedy
        how = ("HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline()
               else f"it could not be downloaded ({first_line(exc)})")
        raise ConfigError(f"[Model] pretrained = true: {what}: {repo}/{filename} is not in the hub cache {cache} "
                          f"and {how}; {fixes}") from None
