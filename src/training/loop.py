"""One epoch of training or validation.

A training step does not wait for the GPU. Its loss, gradient norm, metric counts and the decision
to skip it stay on the device: a fused optimizer (Adam, AdamW) takes the decision as a tensor, and
the host reads each step's flags during the next step (StepFlags), so the CPU queues step t+1 while
the GPU still runs step t. Only SGD and RMSprop, which cannot skip on the device, read the decision
at once: one synchronisation per step.

In a distributed run every rank takes every decision together, so that DDP's all-reduces always
pair up: every rank runs every backward, whatever its loss; a step is skipped when the all-reduced
gradient is not finite or any rank's loss was not (one small all-reduce of the ranks' votes, which
also carries any rank's stop request); and since every rank reads the same flags, the divergence
guard, the skip count and a stop at Ctrl-C or SIGTERM come out the same everywhere.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.data.prepare import BatchPreparer
from src.engine.metrics import ALL_CLASSES, classification_from_confusion, compute_all_metrics
from src.engine.predict import Predictions, predict_batches
from src.engine.probabilities import Probabilities, softmax_probabilities
from src.engine.settings import LoopSettings
from src.utils.device import autocast
from src.utils.distributed import average_scalar, gather_objects, max_over_ranks_
from src.utils.errors import TrainingDiverged

_POSTFIX_INTERVAL_S = 1.0  # how often the progress bar shows the running loss

__all__ = ["NonFiniteGuard", "StepInterrupted", "TrainingDiverged", "train_epoch", "validate_epoch"]


class StepInterrupted(Exception):
    """train_epoch stopped on request after `batches` batches, at the end of an optimizer step."""

    def __init__(self, batches: int) -> None:
        super().__init__(f"stopped after {batches} batches")
        self.batches = batches


class NonFiniteGuard:
    """Counts the optimizer steps in a row skipped for a non-finite loss or gradient; `max_steps` of
    them stop training. With fp16's gradient scaler, the overflows it meets while it calibrates (its
    first scale, 2^16, is meant to be too large: it halves until a step passes) are its business, not
    divergence: until the first step passes, a skip whose losses were all finite is not counted.

    The trainer owns one for the whole run (a streak carries across epochs) and checkpoints it.
    """

    def __init__(self, max_steps: int) -> None:
        self.max_steps, self.streak, self.calibrated = max_steps, 0, False

    def record(self, skipped: bool, scaler_overflow: bool, epoch: int) -> None:
        """One optimizer step's outcome; `scaler_overflow`: only the scaled gradients overflowed."""
        if not skipped:
            self.streak, self.calibrated = 0, True
            return
        if scaler_overflow and not self.calibrated:
            return
        self.streak += 1
        if self.streak >= self.max_steps:
            raise TrainingDiverged(
                f"training diverged at epoch {epoch}: {self.streak} steps in a row had a non-finite loss "
                "or gradient; lower [Training] learning_rate or set max_grad_norm (the last good "
                "checkpoint is kept)"
            )

    def state_dict(self) -> dict:
        return {"streak": self.streak, "calibrated": self.calibrated}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.calibrated = state["streak"], state.get("calibrated", True)


class StepFlags:
    """A step's flags, which the loop acts on once they reach the host.

    On a GPU, `push(flags)` queues their copy to the host and returns the previous step's: by then
    the device has finished that step or nearly so, so reading them waits on work queued a step
    ago, never on the step just queued. On a CPU there is nothing to overlap: `push` returns the
    flags just pushed. Either way every rank reads the same flags at the same step.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self.buffers: list[torch.Tensor] = []

    def push(self, flags: torch.Tensor) -> list[float] | None:
        if not self.cuda:
            return flags.tolist()
        if not self.buffers:  # two pinned buffers: one being filled while the other is read
            self.buffers = [torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True) for _ in range(2)]
        host = self.buffers[0].copy_(flags, non_blocking=True)
        self.buffers.reverse()
        event = torch.cuda.Event()
        event.record()
        previous, self.pending = self.pending, (host, event)
        return self._read(previous)

    def drain(self) -> list[float] | None:
        """The last pushed step's flags not yet returned (the end of an epoch, an interruption)."""
        last, self.pending = self.pending, None
        return self._read(last)

    @staticmethod
    def _read(pending: tuple[torch.Tensor, torch.cuda.Event] | None) -> list[float] | None:
        if pending is None:
            return None
        host, event = pending
        event.synchronize()
        return host.tolist()


# What StepFlags carries per optimizer step: the step was skipped; some rank's loss was not finite;
# some rank asked to stop; the running loss sum and count of this rank (for the progress bar).
SKIPPED, LOSS_NOT_FINITE, STOP, LOSS_SUM, LOSS_COUNT = range(5)
# The epoch's bookkeeping on the device: loss sum and images over finite losses, the norm summed
# over applied steps, applied steps, skipped steps.
LOSS_TOTAL, LOSS_IMAGES, NORM_TOTAL, APPLIED, SKIPPED_STEPS = range(5)


def _no_sync(model: nn.Module, sync: bool):
    """DistributedDataParallel's no_sync (forward and backward inside it) for a micro-batch whose
    gradient is only accumulated: the all-reduce runs once per optimizer step, on the last one."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _gradient_norm(model: nn.Module, max_grad_norm: float) -> torch.Tensor:
    """The total gradient norm (one fused norm, on the device), clipped to `max_grad_norm` when > 0."""
    gradients = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm > 0:
        return torch.nn.utils.clip_grad_norm_(gradients, max_grad_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in gradients])


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` takes a found_inf tensor (torch's fused Adam and AdamW)."""
    return (getattr(optimizer, "_step_supports_amp_scaling", False)
            and all(group.get("fused") for group in optimizer.param_groups))


def _apply_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step() unless `skip`: decided by a fused optimizer on the device (the attribute
    GradScaler also uses to hand over its found_inf), else read here (the step's one synchronisation)."""
    if _skips_on_device(optimizer):
        optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif not bool(skip):
        optimizer.step()


def train_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, epoch: int, settings: LoopSettings | None = None, *,
                scaler: torch.amp.GradScaler | None = None, batch_scheduler=None,
                prepare: BatchPreparer | None = None, teacher: nn.Module | None = None,
                probabilities: Probabilities = softmax_probabilities,
                guard: NonFiniteGuard | None = None, stop: threading.Event | None = None,
                after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over `loader`; returns train_loss, train metrics, lr, grad_norm and throughput.

    `scaler`: fp16 gradient scaler; `batch_scheduler`: stepped after every optimizer step, skipped
    ones included (e.g. OneCycleLR: the schedule follows the step count, as in PyTorch's AMP recipe);
    `prepare`: makes each batch the model's input on `device`, augmented for training
    (src/data/prepare.py; default: batches that are model inputs already); `teacher`: distillation, its
    logits go to the criterion; `guard`: the run's count of bad steps (default: one for this epoch);
    `stop`: once set on any rank, every rank ends the epoch with StepInterrupted at the end of the same
    optimizer step (and sets its own `stop`); `after_step()`: called after every optimizer step, skipped
    ones included (the weights' EMA, which then moves toward unchanged weights: no host read of the skip).
    """
    settings = settings or LoopSettings()
    prepare = prepare or BatchPreparer()
    guard = guard or NonFiniteGuard(settings.max_nonfinite_steps)
    model.train()
    tally = torch.zeros(5, device=device)
    confusion = torch.zeros(len(ALL_CLASSES) ** 2, dtype=torch.long, device=device)
    flags = StepFlags(device)
    images_seen, started, shown, stopping = 0, time.perf_counter(), 0.0, False
    accumulation, n_batches = settings.grad_accumulation, len(loader)
    optimizer.zero_grad(set_to_none=True)
    loss_not_finite = torch.zeros((), dtype=torch.bool, device=device)  # in the current accumulation group

    def read(values: list[float] | None) -> None:
        """Act on a step's flags once they reach the host: the same values, at the same step, on every rank."""
        nonlocal shown, stopping
        if values is None:
            return
        if values[STOP]:
            stopping = True
            if stop is not None:
                stop.set()
        guard.record(bool(values[SKIPPED]), scaler is not None and not values[LOSS_NOT_FINITE], epoch)
        if settings.progress and time.perf_counter() - shown >= _POSTFIX_INTERVAL_S:
            shown = time.perf_counter()
            bar.set_postfix(loss=f"{values[LOSS_SUM] / max(values[LOSS_COUNT], 1):.4f}",
                            img_s=f"{images_seen / (shown - started):.1f}", refresh=False)

    bar = tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False, disable=not settings.progress)
    for index, (images, targets, _) in enumerate(bar):
        images, targets = prepare(images, targets, device, settings.channels_last)
        group_start = index - index % accumulation
        group_size = min(accumulation, n_batches - group_start)
        group_end = index + 1 == group_start + group_size  # last batch of an accumulation group
        with _no_sync(model, sync=group_end):
            with autocast(device, settings.dtype):
                logits = model(images)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images).float()
            extra = (teacher_logits,) if teacher is not None else ()
            loss = criterion(logits.float(), targets, *extra)  # the loss in fp32 whatever the autocast dtype
            # Always backward, a non-finite loss too: its gradient spoils the group's, which skips the step.
            # Dividing by the group size makes the summed gradient that of one big batch.
            scaled = loss / group_size
            (scaler.scale(scaled) if scaler else scaled).backward()
        finite = torch.isfinite(loss.detach())
        loss_not_finite |= ~finite
        tally[LOSS_TOTAL].add_(torch.where(finite, loss.detach() * len(images), 0.0))
        tally[LOSS_IMAGES].add_(finite, alpha=len(images))
        predicted = probabilities(logits.detach().float()).argmax(-1)
        # index_add_, not bincount: bincount reads its largest value on the host to size its output.
        confusion.index_add_(0, (targets * len(ALL_CLASSES) + predicted).flatten(),
                             torch.ones(targets.numel(), dtype=torch.long, device=device))
        images_seen += len(images)
        if not group_end:
            continue
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip and check the true gradients, not the scaled ones
        norm = _gradient_norm(model, settings.max_grad_norm)
        votes = torch.stack([loss_not_finite.float(),
                             torch.full((), float(stop is not None and stop.is_set()), device=device)])
        max_over_ranks_(votes, settings.dist)
        skip = ~torch.isfinite(norm) | (votes[0] > 0)
        _apply_step(optimizer, skip)
        if scaler is not None:
            scaler.update()  # from the gradients' own overflow check: backs off after an overflow
        if after_step is not None:
            after_step()
        optimizer.zero_grad(set_to_none=True)
        if batch_scheduler is not None:
            batch_scheduler.step()
        tally[NORM_TOTAL].add_(torch.where(skip, 0.0, norm.detach().float()))
        tally[APPLIED].add_(~skip)
        tally[SKIPPED_STEPS].add_(skip)
        loss_not_finite.zero_()
        read(flags.push(torch.stack([skip.float(), votes[0], votes[1], tally[LOSS_TOTAL], tally[LOSS_IMAGES]])))
        if stopping and index + 1 < n_batches:
            read(flags.drain())
            raise StepInterrupted(index + 1)
    read(flags.drain())
    elapsed = time.perf_counter() - started
    loss_sum, loss_count, norm_sum, applied, skipped = tally.tolist()
    # Metrics over every rank's batches, not this rank's share alone.
    counts = sum(gather_objects(confusion.cpu().numpy(), settings.dist))
    metrics = classification_from_confusion(counts.reshape(len(ALL_CLASSES), len(ALL_CLASSES)))
    loss_count = int(loss_count)
    train_loss = loss_sum / loss_count if loss_count else math.nan
    return {
        "epoch": epoch,
        "train_loss": average_scalar(train_loss, loss_count, settings.dist),
        "train_f1_macro": metrics["f1_macro"],
        "train_accuracy": metrics["accuracy"],
        # The schedule's learning rate, without a group's layer-decay or head multiplier (lr_scale).
        "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0),
        "grad_norm": norm_sum / applied if applied else math.nan,
        "skipped_steps": int(skipped),
        "images_per_second": settings.dist.world_size * images_seen / elapsed if elapsed > 0 else math.nan,
        "epoch_seconds": elapsed,
    }


def validate_epoch(model: nn.Module, loader, criterion: nn.Module, device: torch.device, epoch: int,
                   settings: LoopSettings | None = None, *,
                   probabilities: Probabilities = softmax_probabilities,
                   prepare: BatchPreparer | None = None) -> dict[str, float]:
    """Loss and every metric on `loader`, keys prefixed with 'val_'; `prepare` as in train_epoch, unaugmented."""
    settings = settings or LoopSettings()
    result = predict_batches(model, loader, device, settings, criterion, desc=f"epoch {epoch} val",
                             probabilities=probabilities, prepare=prepare)
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
