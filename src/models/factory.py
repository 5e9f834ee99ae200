"""The CSI model: a backbone feature map scored zone by zone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.config.trained import checkpoint_config
from src.models.heads import ZoneHead
from src.models.zoo import get_backbone
from src.utils.checkpoint import load_weights, read_checkpoint


class CSIModel(nn.Module):
    """Grey images [B, 1, H, W] -> logits [B, 6 zones, num_classes].

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
    ):
        super().__init__()
        self.arch_name = arch_name
        self.backbone = backbone
        self.head = ZoneHead(channels, num_classes, dropout, zone_pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(cfg: Config) -> CSIModel:
    """The model [Model] describes, for [Data] image_size inputs; fails early on unusable weights."""
    m = cfg.model
    backbone, channels = get_backbone(m.model_arch, m.pretrained, m.pretrained_path, cfg.data.image_size,
                                      m.pretrained_weights)
    return CSIModel(backbone, channels, m.model_arch, m.num_classes, m.dropout, m.zone_pooling)


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
