"""create_optimizer and create_scheduler from the [Optimization] section."""

from __future__ import annotations

import torch
from torch import nn

from src.config.schema import Config


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights only: biases and normalisation parameters (1-D tensors) are not regularised."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    opt, lr = cfg.optimization, cfg.training.learning_rate
    groups = parameter_groups(model, opt.weight_decay)
    if opt.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, monitor_mode: str):
    """The epoch-level LR scheduler, or None. ReduceLROnPlateau follows the monitored metric's
    direction, so an accuracy going up never cuts the learning rate."""
    opt = cfg.optimization
    if opt.scheduler == "reduce_lr_on_plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=monitor_mode, factor=opt.factor, patience=opt.patience, min_lr=opt.min_lr)
    if opt.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=opt.step_size, gamma=opt.factor)
    if opt.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.training.n_epochs,
                                                          eta_min=opt.min_lr)
    return None


def step_scheduler(scheduler, monitored_value: float) -> None:
    """Advance an epoch-level scheduler (plateau schedulers need the monitored value)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(monitored_value)
    elif scheduler is not None:
        scheduler.step()
