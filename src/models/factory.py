"""The CSI model: a backbone feature map scored zone by zone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.config.trained import checkpoint_config
from src.data.masks import reads_masks
from src.data.zones import ZONES
from src.models.heads import ZoneHead
from src.models.zoo import get_backbone
from src.utils.checkpoint import load_weights, read_checkpoint

ATTENTION_FLOOR = 0.1  # zone_focus = attention_mask: what is left of the image outside the zone


class CSIModel(nn.Module):
    """Inputs [B, C, H, W] -> logits [B, 6 zones, num_classes].

    Channel 0 is the grey image. A model with zone_pooling "mask" (trained with lung masks) reads
    the six zone masks of src/data/dataset.py in channels 1-6, pooled in one backbone pass or, with
    [Model] zone_focus = zero_mask | attention_mask, as six masked passes; the others read channel 0 only.
    `arch_name` names the backbone, so that a checkpoint of another architecture can be refused.
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: int,
        arch_name: str,
        num_classes: int = 5,
        dropout: float = 0.5,
        zone_pooling: str = "global",
        zone_focus: str = "pool",
    ):
        super().__init__()
        self.arch_name = arch_name
        self.backbone = backbone
        self.input_channels = 1 + len(ZONES) * (zone_pooling == "mask")
        self.focus = zone_focus if zone_pooling == "mask" else "pool"
        pooling = zone_pooling if zone_pooling != "mask" or self.focus == "pool" else "passes"
        self.head = ZoneHead(channels, num_classes, dropout, pooling)
        # Set by src/models/freeze.py: the parameters it froze, and the modules made only of them.
        self.frozen_parameters: frozenset[str] = frozenset()
        self.frozen_modules: tuple[str, ...] = ()

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the zone classifiers read: [B, 6, C] (or [B, 1, C] for global pooling, see ZoneHead.pool)."""
        if x.shape[1] < self.input_channels:
            raise ValueError(f"this {self.arch_name} model reads lung zone masks: expected {self.input_channels} "
                             f"input channels, got {x.shape[1]}")
        image, zones = x[:, :1], x[:, 1:self.input_channels]
        if self.input_channels == 1:
            return self.head.pool(self.backbone(image))
        if self.focus == "pool":
            return self.head.pool(self.backbone(image), zones)
        # Upstream's masking: six backbone passes, zone k's on the image times its mask (or dimmed outside it).
        weights = zones if self.focus == "zero_mask" else ATTENTION_FLOOR + (1 - ATTENTION_FLOOR) * zones
        return self.head.pool(self.backbone((image * weights).flatten(0, 1)[:, None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.pooled_features(x))

    def train(self, mode: bool = True) -> CSIModel:
        """Frozen parts (src/models/freeze.py) stay in eval mode: their BatchNorm statistics and dropout
        are those of the weights they keep."""
        super().train(mode)
        for name in self.frozen_modules:
            self.get_submodule(name).eval()
        return self


def zone_pooling(cfg: Config) -> str:
    """How the model's zone heads pool: by lung masks when [Data] mask_dir is set, else [Model] zone_pooling."""
    return "mask" if reads_masks(cfg.data) else cfg.model.zone_pooling


def build_model(cfg: Config) -> CSIModel:
    """The model [Model] describes, for [Data] image_size inputs; fails early on unusable weights."""
    m = cfg.model
    backbone, channels = get_backbone(m.model_arch, m.pretrained, m.pretrained_path, cfg.data.image_size,
                                      m.pretrained_weights)
    return CSIModel(backbone, channels, m.model_arch, m.num_classes, m.dropout, zone_pooling(cfg), m.zone_focus)


def build_architecture(cfg: Config) -> CSIModel:
    """The model [Model] describes with random weights: nothing is downloaded or read."""
    return build_model(apply_overrides(cfg, {"Model.pretrained": False, "Model.pretrained_path": ""}))


def weight_bytes(cfg: Config) -> int:
    """The size of the model's weights, from its architecture alone: built on the meta device, it
    allocates no memory and runs no initialisation."""
    with torch.device("meta"):
        model = build_architecture(cfg)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def load_trained_model(cfg: Config, checkpoint: Path) -> tuple[CSIModel, Config, dict]:
    """A checkpoint's model (on the CPU) and the config it was trained with, with `cfg`'s runtime
    keys (device, precision, ...) applied."""
    state = read_checkpoint(checkpoint)
    # The weights come from the checkpoint: never fetch pretrained ones to build the model.
    trained_cfg = apply_overrides(checkpoint_config(state, cfg, checkpoint),
                                  {"Model.pretrained": False, "Model.pretrained_path": ""})
    model = build_model(trained_cfg)
    load_weights(model, state, checkpoint)  # the file is read once
    return model, trained_cfg, state
