"""One epoch of training or validation."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.engine.metrics import ALL_CLASSES, classification_from_confusion, compute_all_metrics
from src.engine.predict import Predictions, predict_batches
from src.engine.probabilities import Probabilities, softmax_probabilities
from src.engine.settings import LoopSettings, to_device
from src.training.callbacks import AverageMeter
from src.utils.device import autocast
from src.utils.distributed import average_scalar, gather_objects
from src.utils.errors import TrainingDiverged

_POSTFIX_INTERVAL_S = 1.0  # the progress bar's loss needs a host read: not every step

__all__ = ["NonFiniteGuard", "StepInterrupted", "TrainingDiverged", "train_epoch", "validate_epoch"]


class StepInterrupted(Exception):
    """train_epoch stopped on request after `batches` batches, at the end of an optimizer step."""

    def __init__(self, batches: int) -> None:
        super().__init__(f"stopped after {batches} batches")
        self.batches = batches


def _grad_norm(model: nn.Module) -> torch.Tensor:
    # One fused norm over every gradient (foreach on CPU and CUDA): a norm per parameter cost ~30
    # small kernels per step on custom_cnn, 170 on resnet50.
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, settings: LoopSettings,
                    scaler: torch.amp.GradScaler | None, batch_scheduler) -> float:
    """Unscale, clip, check and apply the accumulated gradients; returns their norm (NaN if skipped)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip and check the true gradients, not the scaled ones
    if settings.max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    else:
        norm = _grad_norm(model)
    finite = bool(torch.isfinite(norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself when the gradients overflowed
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if finite and batch_scheduler is not None:
        batch_scheduler.step()
    return float(norm) if finite else math.nan


class NonFiniteGuard:
    """Counts the steps in a row with a non-finite loss or gradient; `max_steps` of them stop training.

    The trainer owns one for the whole run (a streak carries across epochs) and checkpoints it.
    """

    def __init__(self, max_steps: int) -> None:
        self.max_steps, self.streak = max_steps, 0

    def failed(self, epoch: int) -> None:
        self.streak += 1
        if self.streak >= self.max_steps:
            raise TrainingDiverged(
                f"training diverged at epoch {epoch}: {self.streak} steps in a row had a non-finite loss "
                "or gradient; lower [Training] learning_rate or set max_grad_norm (the last good "
                "checkpoint is kept)"
            )

    def passed(self) -> None:
        self.streak = 0

    def state_dict(self) -> dict:
        return {"streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.streak = state["streak"]


def train_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, epoch: int, settings: LoopSettings | None = None, *,
                scaler: torch.amp.GradScaler | None = None, batch_scheduler=None,
                augment: Callable | None = None, teacher: nn.Module | None = None,
                probabilities: Probabilities = softmax_probabilities,
                guard: NonFiniteGuard | None = None, stop: threading.Event | None = None) -> dict[str, float]:
    """One pass over `loader`; returns train_loss, train metrics, lr, grad_norm and throughput.

    `scaler`: fp16 gradient scaler; `batch_scheduler`: stepped after every optimizer step (e.g.
    OneCycleLR); `augment(images, targets)`: training batches only; `teacher`: distillation, its
    logits go to the criterion; `guard`: the run's count of bad steps (default: one for this epoch);
    `stop`: once set, the epoch ends with StepInterrupted at the end of the current optimizer step.
    """
    settings = settings or LoopSettings()
    guard = guard or NonFiniteGuard(settings.max_nonfinite_steps)
    model.train()
    # Per-step bookkeeping stays on the device: the loss sum and the training confusion counts are
    # read once per epoch (and for the progress bar at most once a second), so no step waits on a
    # host transfer beyond the one finiteness check that decides whether its gradient is kept.
    loss_sum, loss_count = torch.zeros((), device=device), 0
    confusion = torch.zeros(len(ALL_CLASSES) ** 2, dtype=torch.long, device=device)
    norm_meter = AverageMeter()
    skipped, images_seen, started, shown = 0, 0, time.perf_counter(), 0.0
    accumulation, n_batches = settings.grad_accumulation, len(loader)
    optimizer.zero_grad(set_to_none=True)
    group_has_gradient = False
    bar = tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False, disable=not settings.progress)
    for index, (images, targets, _) in enumerate(bar):
        images, targets = to_device(images, targets, device, settings.channels_last)
        if augment is not None:
            images, targets = augment(images, targets)
        with autocast(device, settings.dtype):
            logits = model(images)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images).float()
        extra = (teacher_logits,) if teacher is not None else ()
        loss = criterion(logits.float(), targets, *extra)  # the loss in fp32 whatever the autocast dtype
        group_start = index - index % accumulation
        group_size = min(accumulation, n_batches - group_start)
        if torch.isfinite(loss):
            # Dividing by the group size makes the summed gradient that of one big batch.
            scaled = loss / group_size
            (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.detach() * len(images)
            loss_count += len(images)
            group_has_gradient = True
        else:
            skipped += 1
            guard.failed(epoch)
        group_end = index + 1 == group_start + group_size  # last batch of an accumulation group
        if group_end:
            if group_has_gradient:
                norm = _optimizer_step(model, optimizer, settings, scaler, batch_scheduler)
                if math.isnan(norm):
                    skipped += 1
                    guard.failed(epoch)
                else:
                    guard.passed()
                    norm_meter.update(norm)
            group_has_gradient = False
        predicted = probabilities(logits.detach().float()).argmax(-1)
        confusion += torch.bincount((targets * len(ALL_CLASSES) + predicted).flatten(), minlength=confusion.numel())
        images_seen += len(images)
        if settings.progress and time.perf_counter() - shown >= _POSTFIX_INTERVAL_S:
            shown = time.perf_counter()
            bar.set_postfix(loss=f"{float(loss_sum) / max(loss_count, 1):.4f}",
                            img_s=f"{images_seen / (shown - started):.1f}", refresh=False)
        if group_end and index + 1 < n_batches and stop is not None and stop.is_set():
            raise StepInterrupted(index + 1)
    elapsed = time.perf_counter() - started
    # Metrics over every rank's batches, not this rank's share alone.
    counts = sum(gather_objects(confusion.cpu().numpy(), settings.dist))
    metrics = classification_from_confusion(counts.reshape(len(ALL_CLASSES), len(ALL_CLASSES)))
    train_loss = float(loss_sum) / loss_count if loss_count else math.nan
    return {
        "epoch": epoch,
        "train_loss": average_scalar(train_loss, loss_count, settings.dist),
        "train_f1_macro": metrics["f1_macro"],
        "train_accuracy": metrics["accuracy"],
        "lr": optimizer.param_groups[0]["lr"],
        "grad_norm": norm_meter.average,
        "skipped_steps": skipped,
        "images_per_second": settings.dist.world_size * images_seen / elapsed if elapsed > 0 else math.nan,
        "epoch_seconds": elapsed,
    }


def validate_epoch(model: nn.Module, loader, criterion: nn.Module, device: torch.device, epoch: int,
                   settings: LoopSettings | None = None, *,
                   probabilities: Probabilities = softmax_probabilities) -> dict[str, float]:
    """Loss and every metric on `loader`, keys prefixed with 'val_'."""
    settings = settings or LoopSettings()
    result = predict_batches(model, loader, device, settings, criterion, desc=f"epoch {epoch} val",
                             probabilities=probabilities)
    if settings.dist.enabled:  # each rank scored a disjoint share: metrics need all of them
        parts = gather_objects(result, settings.dist)
        count = sum(len(p.file_ids) for p in parts)
        result = Predictions([f for p in parts for f in p.file_ids], np.concatenate([p.probs for p in parts]),
                             np.concatenate([p.targets for p in parts]),
                             sum(p.loss * len(p.file_ids) for p in parts if len(p.file_ids)) / max(count, 1))
    metrics = compute_all_metrics(result.targets, result.probs.argmax(-1), result.probs,
                                  ahf_low=settings.ahf_low, ahf_high=settings.ahf_high)
    return {"epoch": epoch, "val_loss": result.loss, "val_images": len(result.file_ids),
            **{f"val_{k}": v for k, v in metrics.items()}}

