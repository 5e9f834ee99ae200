"""How each step runs, for training and evaluation alike: device placement, arithmetic, memory format.

A batch's way to the device is src/data/prepare.py's (BatchPreparer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from src.config.schema import Config, section_fields
from src.engine.precision import choose_precision
from src.utils.device import resolve_precision, use_channels_last
from src.utils.distributed import DistInfo

_EVALUATION = section_fields("Evaluation")


@dataclass(frozen=True)
class LoopSettings:
    """How each step runs, fixed for a run. The moving parts (scaler, schedulers, augmenter, teacher)
    are passed to train_epoch explicitly; the running count of bad steps is a NonFiniteGuard's."""

    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    grad_accumulation: int = 1
    max_grad_norm: float = 0.0
    max_nonfinite_steps: int = section_fields("Training")["max_nonfinite_steps"].default
    ahf_low: float = _EVALUATION["ahf_low_threshold"].default
    ahf_high: float = _EVALUATION["ahf_high_threshold"].default
    progress: bool = True  # show a progress bar
    dist: DistInfo = field(default_factory=DistInfo)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, measure: bool = True) -> LoopSettings:
        """Settings per `cfg`, with the precision and memory format it asks for on `device`.
        `measure=False` (evaluation, prediction): precision = auto takes the pick training measured
        on this machine, and never times training steps itself."""
        if cfg.training.precision == "auto":  # measured for this model on this device (cached)
            choice = choose_precision(cfg, device, measure)
            dtype, channels_last = choice.dtype, choice.channels_last
        else:
            dtype = resolve_precision(cfg.training.precision, device)
            channels_last = use_channels_last(cfg.training.channels_last, dtype)
        return cls(dtype=dtype, channels_last=channels_last,
                   grad_accumulation=cfg.training.gradient_accumulation_steps,
                   max_grad_norm=cfg.training.max_grad_norm,
                   max_nonfinite_steps=cfg.training.max_nonfinite_steps,
                   ahf_low=cfg.evaluation.ahf_low_threshold, ahf_high=cfg.evaluation.ahf_high_threshold)


def place_model(model: nn.Module, device: torch.device, settings: LoopSettings) -> nn.Module:
    """`model` on `device`, in channels-last memory format when the settings use it."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if settings.channels_last else model
