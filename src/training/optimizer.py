"""create_optimizer and create_scheduler from the [Optimization] section."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler

from src.config.schema import Config
from src.models.freeze import layer_lr_scales


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True,
                     lr_scales: dict[str, float] | None = None) -> list[dict]:
    """The trainable parameters (those with requires_grad) in groups. Weights decay; with
    `no_decay_norm_bias`, biases and normalisation parameters (the 1-D tensors) are not regularised,
    since shrinking them only shifts activations. With `lr_scales` (parameter name -> multiplier of the
    learning rate), one group per multiplier, largest first, each recording it as 'lr_scale'."""
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = lr_scales[name] if lr_scales else 1.0
            groups.setdefault((scale, no_decay_norm_bias and param.ndim <= 1), []).append(param)
    return [{"params": params, "weight_decay": 0.0 if exempt else weight_decay, "lr_scale": scale}
            for (scale, exempt), params in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))]


# Where Adam and AdamW run fused: one kernel for all parameters, which also takes the loop's skip
# decision as a device tensor (found_inf), so no step waits for the host to read it.
_FUSED_DEVICES = ("cpu", "cuda")


def create_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The [Optimization] optimizer over `model`'s parameters that train (requires_grad), which are on
    their device already: each at learning_rate x its layer-decay or head multiplier ([Optimization]
    layer_decay, head_lr_multiplier).

    SGD and RMSprop run unfused: RMSprop has no fused kernel, and fused SGD skips a step
    (found_inf) without initialising its momentum buffers, which a skipped first step then leaves
    holding uninitialised memory (seen on CPU, torch 2.14).
    """
    opt, lr = cfg.optimization, cfg.training.learning_rate
    scales = (layer_lr_scales(model, opt.layer_decay, opt.head_lr_multiplier)
              if (opt.layer_decay, opt.head_lr_multiplier) != (1.0, 1.0) else None)
    groups = parameter_groups(model, opt.weight_decay, opt.no_decay_norm_bias, scales)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    fused = all(p.device.type in _FUSED_DEVICES for group in groups for p in group["params"])
    if opt.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if opt.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=opt.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0)


@dataclass
class Schedule:
    """An LR scheduler and when to step it: every optimizer step or every epoch."""

    scheduler: object | None
    per_step: bool = False

    def step_epoch(self, monitored_value: float) -> None:
        """End of an epoch: plateau schedulers read the monitored value, per-step ones do nothing."""
        if self.scheduler is None or self.per_step:
            return
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitored_value)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, monitor_mode: str,
                     steps_per_epoch: int = 1) -> Schedule:
    """The configured schedule. ReduceLROnPlateau follows the monitored metric's direction, so an
    accuracy going up never cuts the learning rate; onecycle is stepped every optimizer step."""
    opt, epochs = cfg.optimization, cfg.training.n_epochs
    name = opt.scheduler
    if name == "reduce_lr_on_plateau":
        return Schedule(lr_scheduler.ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=opt.factor,
                                                       patience=opt.patience, min_lr=opt.min_lr))
    if name == "step":
        return Schedule(lr_scheduler.StepLR(optimizer, step_size=opt.step_size, gamma=opt.factor))
    if name == "exponential":
        return Schedule(lr_scheduler.ExponentialLR(optimizer, gamma=opt.gamma))
    if name == "cosine":
        return Schedule(lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=opt.min_lr))
    if name == "cosine_warm_restarts":
        return Schedule(lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=opt.restart_epochs, T_mult=2,
                                                                 eta_min=opt.min_lr))
    if name == "onecycle":
        # OneCycleLR needs at least two steps in each phase, even for very short (debug) runs.
        total = max(epochs * steps_per_epoch, 4)
        warmup_share = opt.warmup_epochs / epochs if opt.warmup_epochs else 0.3
        max_lr = [group["lr"] for group in optimizer.param_groups]  # each group's own (layer decay)
        return Schedule(lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total,
                                                pct_start=min(max(warmup_share, 2 / total), 1 - 2 / total)),
                        per_step=True)
    if name == "warmup_cosine":
        warmup = min(opt.warmup_epochs, epochs - 1)
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs - warmup, 1), eta_min=opt.min_lr)
        if warmup == 0:
            return Schedule(cosine)
        linear = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
        return Schedule(lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup]))
    return Schedule(None)
