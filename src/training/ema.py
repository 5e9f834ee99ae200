"""An exponential moving average of the weights ([Training] ema_decay), as timm's ModelEma keeps one.

After every optimizer step, average = decay x average + (1 - decay) x weights (torch's own EMA update,
torch.optim.swa_utils.get_ema_multi_avg_fn), starting from the weights the run starts with. Only
what training changes is averaged: the parameters the optimizer holds and the floating-point buffers
(BatchNorm statistics) outside frozen modules; a frozen weight's average is itself. The run validates,
checkpoints and exports the average; its checkpoints keep the raw weights beside it, so a resumed run
continues both exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from src.models.factory import CSIModel

RAW_WEIGHTS = "training_weights"  # checkpoint entry: the raw values of the averaged weights


def averaged_names(model: CSIModel) -> list[str]:
    """The state entries of `model` that training changes (see the module docstring)."""
    frozen = tuple(f"{name}." for name in model.frozen_modules)
    params = [name for name, p in model.named_parameters() if p.requires_grad]
    buffers = [name for name, b in model.named_buffers() if b.is_floating_point() and not name.startswith(frozen)]
    return params + buffers


@torch.no_grad()
def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


class WeightEMA:
    """The moving average of `model`'s entries `names` (default: averaged_names(model) as it is now)."""

    def __init__(self, model: CSIModel, decay: float, names: list[str] | None = None) -> None:
        self.names = names if names is not None else averaged_names(model)
        state = model.state_dict()  # detached tensors sharing the weights' storage: they follow every step
        self.live = [state[name] for name in self.names]
        self.average = [tensor.clone() for tensor in self.live]
        self._update = get_ema_multi_avg_fn(decay)

    def update(self) -> None:
        """One step of the average, after an optimizer step."""
        self._update(self.average, self.live, None)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`model`'s state with the averaged entries in place of the raw ones."""
        return {**model.state_dict(), **dict(zip(self.names, self.average))}

    def raw_weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.live))

    def load(self, average: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint's average (its model state) and raw weights."""
        _copy(self.average, [average[name] for name in self.names])
        _copy(self.live, [raw[name] for name in self.names])

    def copy_to_model(self) -> None:
        """Put the average into the model's weights for good (the end of training)."""
        _copy(self.live, self.average)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block (to validate it) and its raw weights after."""
        raw = [tensor.clone() for tensor in self.live]
        self.copy_to_model()
        try:
            yield
        finally:
            _copy(self.live, raw)
