"""One epoch of training or validation, and batched prediction."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.config.schema import Config, section_fields
from src.training.callbacks import AverageMeter
from src.training.loss import softmax_probabilities
from src.training.metrics import ALL_CLASSES, classification_from_confusion, compute_all_metrics
from src.training.precision import choose_precision
from src.utils.device import autocast, resolve_precision, use_channels_last
from src.utils.distributed import DistInfo, average_scalar, gather_objects
from src.utils.errors import TrainingDiverged

_POSTFIX_INTERVAL_S = 1.0  # the progress bar's loss needs a host read: not every step

__all__ = ["LoopSettings", "NonFiniteGuard", "Predictions", "TrainingDiverged", "place_model", "predict_batches",
           "train_epoch", "validate_epoch"]

_EVALUATION = section_fields("Evaluation")
Probabilities = Callable[[torch.Tensor], torch.Tensor]  # logits -> class probabilities


class StepInterrupted(Exception):
    """train_epoch stopped on request after `batches` batches, at the end of an optimizer step."""

    def __init__(self, batches: int) -> None:
        super().__init__(f"stopped after {batches} batches")
        self.batches = batches


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
    def from_config(cls, cfg: Config, device: torch.device) -> LoopSettings:
        """Settings per `cfg`, with the precision and memory format it asks for on `device`."""
        if cfg.training.precision == "auto":  # measured for this model on this device (cached)
            choice = choose_precision(cfg, device)
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


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return images, targets.to(device, non_blocking=True)


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
        images, targets = _to_device(images, targets, device, settings.channels_last)
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


@dataclass
class Predictions:
    file_ids: list[str]
    probs: np.ndarray  # [N, 6, 5]
    targets: np.ndarray  # [N, 6]
    loss: float  # NaN when no criterion was given


@torch.no_grad()
def predict_batches(model: nn.Module, loader, device: torch.device, settings: LoopSettings | None = None,
                    criterion: nn.Module | None = None, desc: str = "predict",
                    probabilities: Probabilities = softmax_probabilities) -> Predictions:
    """Class probabilities of every image of `loader` (and the mean loss when `criterion` is given)."""
    settings = settings or LoopSettings()
    model.eval()
    loss_meter, file_ids, probs, targets_seen = AverageMeter(), [], [], []
    for images, targets, ids in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not settings.progress):
        images, targets = _to_device(images, targets, device, settings.channels_last)
        with autocast(device, settings.dtype):
            logits = model(images)
        if criterion is not None:
            loss_meter.update(criterion(logits, targets).item(), len(images))
        probs.append(probabilities(logits.float()).cpu())
        targets_seen.append(targets.cpu())
        file_ids.extend(ids)
    if not file_ids:  # a rank whose share of the data is empty
        return Predictions([], np.zeros((0, 6, 5), np.float32), np.zeros((0, 6), np.int64), float("nan"))
    return Predictions(file_ids, torch.cat(probs).numpy(), torch.cat(targets_seen).numpy(), loss_meter.average)


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

