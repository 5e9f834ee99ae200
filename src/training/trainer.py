"""train_model: config -> data -> model -> epochs -> checkpoints and history in a run directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from src.config.render import render_ini
from src.config.schema import Config
from src.data.dataset import make_loader
from src.data.load import DataBundle, load_data
from src.models.factory import build_model
from src.training.callbacks import EarlyStopping, MetricsTracker, is_improvement, resolve_mode
from src.training.loop import LoopSettings, train_epoch, validate_epoch
from src.training.loss import WeightedCSILoss
from src.training.optimizer import create_optimizer, create_scheduler, step_scheduler
from src.utils.checkpoint import save_checkpoint
from src.utils.device import resolve_device, resolve_precision, use_channels_last
from src.utils.errors import ConfigError
from src.utils.io import atomic_write_text, atomic_write_with
from src.utils.logging import logger
from src.utils.run_dir import BEST, LAST, create_run_dir
from src.utils.seed import seed_everything

__all__ = ["train_model", "train_epoch", "validate_epoch", "TrainResult"]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict  # validation metrics of the best epoch
    history: list[dict]  # merged train + validation metrics per epoch


def _write_histories(run_dir: Path, train_history: list[dict], val_history: list[dict]) -> None:
    """Rewritten after every epoch, so a crash loses nothing already trained."""
    logs = run_dir / "logs"
    atomic_write_text(logs / "training_history.json", json.dumps(train_history, indent=1))
    atomic_write_text(logs / "validation_history.json", json.dumps(val_history, indent=1))
    rows = [{**t, **v} for t, v in zip(train_history, val_history)]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join(f"{row.get(c, '')}" for c in columns) for row in rows]
    atomic_write_text(logs / "metrics.csv", "\n".join(lines) + "\n")


def _checkpoint_state(model, cfg_text: str, epoch: int, metrics: dict, optimizer, scheduler) -> dict:
    return {
        "model": model.state_dict(),
        "arch": model.arch_name,
        "epoch": epoch,
        "metrics": metrics,
        "config": cfg_text,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }


def train_model(cfg: Config, data: DataBundle | None = None,
                on_epoch_end: Callable[[int, dict], None] | None = None, provenance: str = "") -> TrainResult:
    """Train per `cfg` in a new run directory.

    `data` lets callers (hyperopt) reuse loaded data; `on_epoch_end(epoch, metrics)` is called after
    each epoch's checkpoints are written and may raise to stop training (e.g. optuna.TrialPruned);
    `provenance` is added to the header of the run's config.ini (e.g. which values a study chose).
    """
    seed_everything(cfg.training.seed)
    device = resolve_device(cfg.training.device)
    dtype = resolve_precision(cfg.training.precision, device)
    channels_last = use_channels_last(cfg.training.channels_last, dtype)
    data = data or load_data(cfg)
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    monitor, mode = cfg.callbacks.monitor, resolve_mode(cfg.callbacks.monitor, cfg.callbacks.mode)

    train_loader = make_loader(data.dataset("train"), cfg.training.batch_size, shuffle=True,
                               seed=cfg.training.seed, num_workers=cfg.training.num_workers,
                               pin_memory=cfg.training.pin_memory and device.type == "cuda")
    val_loader = make_loader(data.dataset("val"), cfg.evaluation.batch_size, shuffle=False,
                             num_workers=cfg.training.num_workers)
    if len(train_loader.dataset) == 0 or len(val_loader.dataset) == 0:
        raise ConfigError(f"{cfg.data.labels_csv}: the train and val splits need at least one image each "
                          f"(got {len(train_loader.dataset)} and {len(val_loader.dataset)})")
    criterion = WeightedCSILoss(cfg.loss.unknown_weight).to(device)
    optimizer = create_optimizer(model, cfg)
    scheduler = create_scheduler(optimizer, cfg, mode)
    settings = LoopSettings.from_config(cfg, dtype, channels_last)
    stopper = EarlyStopping(cfg.callbacks.early_stopping_patience, cfg.callbacks.early_stopping_min_delta,
                            mode, cfg.callbacks.restore_best_weights)

    run_dir = create_run_dir(cfg.training.output_dir, cfg.model.model_arch, cfg.training.run_name)
    header = f"Resolved configuration of run {run_dir.name}" + (f"\n{provenance}" if provenance else "")
    cfg_text = render_ini(cfg, header, documented=False)
    atomic_write_text(run_dir / "config.ini", cfg_text)
    atomic_write_with(run_dir / "split.csv", lambda h: data.split_table().to_csv(h, index=False), binary=False)
    logger.info(f"Run {run_dir}: {len(train_loader.dataset)} train / {len(val_loader.dataset)} val images, "
                f"{cfg.model.model_arch} on {device} ({str(dtype).removeprefix('torch.')}"
                f"{', channels_last' if channels_last else ''})")

    train_history, val_history = [], []
    tracker = MetricsTracker()
    best_value = None
    for epoch in range(1, cfg.training.n_epochs + 1):
        train_metrics = train_epoch(model, train_loader, criterion, optimizer, device, epoch, settings)
        val_metrics = validate_epoch(model, val_loader, criterion, device, epoch, settings)
        value = val_metrics.get(monitor)
        if value is None:
            raise ConfigError(f"[Callbacks] monitor = {monitor}: not a validation metric; "
                              f"choose one of {', '.join(k for k in val_metrics if k != 'epoch')}")
        train_history.append(train_metrics)
        val_history.append(val_metrics)
        tracker.update({**train_metrics, **val_metrics})
        _write_histories(run_dir, train_history, val_history)
        state = _checkpoint_state(model, cfg_text, epoch, val_metrics, optimizer, scheduler)
        if is_improvement(value, best_value, mode):
            best_value = value
            save_checkpoint(run_dir / BEST, state)
        save_checkpoint(run_dir / LAST, state)
        logger.info(f"epoch {epoch}/{cfg.training.n_epochs}  loss {train_metrics['train_loss']:.4f}  "
                    f"val_loss {val_metrics['val_loss']:.4f}  {monitor} {value:.4f}  "
                    f"val_qwk {val_metrics['val_qwk']:.3f}  lr {train_metrics['lr']:.2e}  "
                    f"{train_metrics['images_per_second']:.1f} img/s")
        should_stop = stopper.step(value, epoch, model)
        step_scheduler(scheduler, value)
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**train_metrics, **val_metrics})
        if should_stop:
            logger.info(f"Early stopping: no {monitor} improvement for {stopper.bad_epochs} epochs")
            break
    if cfg.callbacks.restore_best_weights and stopper.restore(model):
        logger.info(f"Restored the weights of epoch {stopper.best_epoch} (best {monitor})")
    best = tracker.best(monitor, mode) or tracker.history[-1]
    if best_value is None:  # the monitored metric was never defined: the last epoch stands in
        save_checkpoint(run_dir / BEST, _checkpoint_state(model, cfg_text, best["epoch"], val_history[-1],
                                                          optimizer, scheduler))
    return TrainResult(run_dir=run_dir, best_epoch=int(best["epoch"]),
                       best_metrics={k: v for k, v in best.items() if k.startswith("val_")},
                       history=tracker.history)
