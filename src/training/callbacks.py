"""EarlyStopping, MetricsTracker and AverageMeter.

The trainer's history and best epoch are RunState's (run_state.py), which counts improvements with
an EarlyStopping; MetricsTracker and EarlyStopping's own weight copy remain for code written
against the legacy API."""

from __future__ import annotations

import math

import torch
from torch import nn

_LOWER_IS_BETTER = ("loss", "mae", "rmse", "error", "unknown_pred_rate")


def resolve_mode(monitor: str, mode: str = "auto") -> str:
    """'min' or 'max' for `monitor`; auto: min for losses and errors, max otherwise."""
    if mode != "auto":
        return mode
    return "min" if any(word in monitor for word in _LOWER_IS_BETTER) else "max"


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping:
    """Stop after `patience` epochs without an improvement larger than `min_delta`.

    With `restore_best_weights`, a detached copy of the best epoch's weights is kept (a copy, not
    references to the live tensors, which keep training) and `restore` loads it back.
    """

    def __init__(self, patience: int, min_delta: float, mode: str, restore_best_weights: bool = True) -> None:
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def step(self, value: float, epoch: int, model: nn.Module | None = None) -> bool:
        """Record this epoch's value; True when training should stop."""
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best_weights:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return 0 < self.patience <= self.bad_epochs

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights back; False when there are none to restore."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


class AverageMeter:
    """Running weighted average (e.g. loss over the batches of an epoch)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += value * n
        self.count += n

    @property
    def average(self) -> float:
        return self.total / self.count if self.count else float("nan")


class MetricsTracker:
    """Per-epoch metric dicts of one run, with the best epoch of any metric."""

    def __init__(self, history: list[dict] | None = None) -> None:
        self.history: list[dict] = list(history or [])

    def update(self, metrics: dict) -> None:
        self.history.append(dict(metrics))

    def best(self, metric: str, mode: str) -> dict | None:
        candidates = [h for h in self.history if not math.isnan(h.get(metric, math.nan))]
        if not candidates:
            return None
        pick = max if mode == "max" else min
        return pick(candidates, key=lambda h: h[metric])
