"""train_model: config -> data -> model -> epochs -> checkpoints and history in a run directory."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.config.render import render_ini
from src.config.schema import Config
from src.data.augment import BatchAugmenter
from src.data.dataset import make_loader
from src.data.load import DataBundle, load_data
from src.models.factory import build_model
from src.training.callbacks import EarlyStopping, MetricsTracker, is_improvement, resolve_mode
from src.training.distillation import build_distillation
from src.training.loggers import create_loggers
from src.training.loop import LoopSettings, StepInterrupted, place_model, train_epoch, validate_epoch
from src.training.loss import build_criterion
from src.training.optimizer import create_optimizer, create_scheduler
from src.utils.checkpoint import read_checkpoint, save_checkpoint
from src.utils.device import resolve_device
from src.utils.distributed import DistInfo, broadcast_object, init_distributed, shutdown
from src.utils.errors import CheckpointError, ConfigError, OutputError, TrainingInterrupted
from src.utils.interrupt import stop_requests
from src.utils.io import atomic_write_text, atomic_write_with, remove_temporaries, require_free_space
from src.utils.logging import logger
from src.utils.run_dir import BEST, LAST, create_run_dir
from src.utils.seed import seed_everything

__all__ = ["train_model", "train_epoch", "validate_epoch", "TrainResult", "DebugRun"]


@dataclass
class TrainResult:
    run_dir: Path | None  # None for a --fast-dev-run, which writes nothing
    best_epoch: int
    best_metrics: dict  # validation metrics of the best epoch
    history: list[dict]  # merged train + validation metrics per epoch
    is_main: bool = True  # False on the non-zero ranks of a distributed run, which write nothing


@dataclass(frozen=True)
class DebugRun:
    """--fast-dev-run: one batch of train and val, nothing written. --overfit-batches N: train and
    validate on the same first N training batches (no shuffling, no augmentation)."""

    fast_dev_run: bool = False
    overfit_batches: int = 0


@dataclass
class _Progress:
    """What a checkpoint carries besides the model, optimizer and scheduler."""

    train_history: list[dict] = field(default_factory=list)
    val_history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    top_k: list[list] = field(default_factory=list)  # [value, epoch] of kept checkpoint_epoch_<N>.pth


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                     has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_histories(run_dir: Path, progress: _Progress) -> None:
    """Rewritten after every epoch, so a crash loses nothing already trained."""
    logs = run_dir / "logs"
    atomic_write_text(logs / "training_history.json", json.dumps(progress.train_history, indent=1))
    atomic_write_text(logs / "validation_history.json", json.dumps(progress.val_history, indent=1))


def resume_checkpoint(target: str | Path) -> Path:
    """The checkpoint to continue from: the file itself, or a run directory's last_model.pth."""
    path = Path(target)
    if not path.exists():
        raise CheckpointError(f"{target}: nothing to resume (no such run directory or checkpoint)")
    path = path / LAST if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{target}: nothing to resume (no {LAST} in that run directory)")
    return path


def wrap_model(model: torch.nn.Module, compile: bool, dist: DistInfo, device: torch.device) -> torch.nn.Module:
    """The module the loop trains: `model` compiled and/or in DistributedDataParallel. State dicts
    are always taken from `model` itself, so checkpoints never carry the wrappers' key prefixes."""
    net = torch.compile(model) if compile else model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return net


class _Trainer:
    """One training run's state; `fit` runs the epochs. Split out of train_model for readability."""

    def __init__(self, cfg: Config, data: DataBundle | None, debug: DebugRun, resume: Path | None,
                 provenance: str = "", run_dir: Path | None = None) -> None:
        self.cfg, self.debug = cfg, debug
        seed_everything(cfg.training.seed)
        self.device = resolve_device(cfg.training.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        self.settings = LoopSettings.from_config(cfg, self.device)
        self.data = data or load_data(cfg)
        self.model = place_model(build_model(cfg), self.device, self.settings)
        self.monitor = cfg.callbacks.monitor
        self.mode = resolve_mode(self.monitor, cfg.callbacks.mode)
        self._make_loaders()
        self.criterion = build_criterion(cfg, self.data.labels("train"))
        teacher = None
        if cfg.distillation.teacher_checkpoint:
            teacher, self.criterion = build_distillation(cfg, self.criterion, self.device)
        self.criterion = self.criterion.to(self.device)
        self.optimizer = create_optimizer(self.model, cfg)
        steps = -(-len(self.train_loader) // cfg.training.gradient_accumulation_steps)
        self.schedule = create_scheduler(self.optimizer, cfg, self.mode, steps)
        self.settings.progress = self.dist.is_main
        self.settings.dist = self.dist
        self.settings.probabilities = self.criterion.probabilities
        self.settings.teacher = teacher
        if not debug.overfit_batches:  # overfitting a fixed batch means seeing it unchanged
            self.settings.augment = BatchAugmenter(cfg.augmentation, self.data.mean, self.data.std)
        if self.schedule.per_step:
            self.settings.batch_scheduler = self.schedule.scheduler
        if self.settings.dtype == torch.float16:
            self.settings.scaler = torch.amp.GradScaler("cuda")
        self.stopper = EarlyStopping(cfg.callbacks.early_stopping_patience, cfg.callbacks.early_stopping_min_delta,
                                     self.mode, cfg.callbacks.restore_best_weights)
        self.progress = _Progress()
        self.start_epoch, self.first_batch = 1, 0  # first_batch > 0: resuming inside start_epoch
        self.net = wrap_model(self.model, cfg.training.compile, self.dist, self.device)
        self.run_dir = self._prepare_run_dir(resume, provenance, run_dir)
        if resume is not None:
            self._restore(resume)

    def _make_loaders(self) -> None:
        cfg, debug, dist = self.cfg, self.debug, self.dist
        train_set = self.data.dataset("train")
        val_set = self.data.dataset("val")
        batch, limit, shuffle = cfg.training.batch_size, None, True
        if debug.fast_dev_run:
            limit = batch
        if debug.overfit_batches:
            limit, shuffle, val_set = debug.overfit_batches * batch, False, train_set
        if len(train_set) == 0 or len(val_set) == 0:
            raise ConfigError(f"{cfg.data.labels_csv}: the train and val splits need at least one image each "
                              f"(got {len(train_set)} and {len(val_set)})")
        common = {"num_workers": cfg.training.num_workers, "rank": dist.rank, "world_size": dist.world_size,
                  "pin_memory": cfg.training.pin_memory and self.device.type == "cuda"}
        self.train_loader = make_loader(train_set, batch, shuffle=shuffle, seed=cfg.training.seed, limit=limit,
                                        **common)
        val_limit = limit if (debug.fast_dev_run or debug.overfit_batches) else None
        self.val_loader = make_loader(val_set, cfg.evaluation.batch_size, shuffle=False, limit=val_limit,
                                      keep_all=True, **common)
        if len(self.train_loader) == 0:
            raise ConfigError(f"[Training] batch_size = {batch}: too few training images for "
                              f"{dist.world_size} processes")

    def _prepare_run_dir(self, resume: Path | None, provenance: str, given: Path | None) -> Path | None:
        """The run directory: the resumed one, the given one or a new one, holding config.ini and
        split.csv (whose config text every checkpoint embeds; a resumed run takes it from its checkpoint)."""
        cfg = self.cfg
        if self.debug.fast_dev_run:
            return None
        run_dir = None
        if self.dist.is_main:
            self._require_checkpoint_space(resume.parent if resume else given or Path(cfg.training.output_dir),
                                           resume)
            run_dir = resume.parent if resume else given or create_run_dir(
                cfg.training.output_dir, cfg.model.model_arch, cfg.training.run_name)
            if resume:  # half-written files of a killed process
                remove_temporaries(run_dir)
                remove_temporaries(run_dir / "logs")
        run_dir = broadcast_object(run_dir, self.dist)
        if resume is None:
            header = f"Resolved configuration of run {run_dir.name}" + (f"\n{provenance}" if provenance else "")
            self.cfg_text = render_ini(cfg, header, documented=False)
            if self.dist.is_main:
                atomic_write_text(run_dir / "config.ini", self.cfg_text)
                atomic_write_with(run_dir / "split.csv", lambda h: self.data.split_table().to_csv(h, index=False),
                                  binary=False)
        return run_dir

    def _require_checkpoint_space(self, directory: Path, resume: Path | None) -> None:
        """Fail before training when the disk cannot hold the run's checkpoints: each holds the
        weights and up to two optimizer moments per weight; a new run keeps best, last and the
        top-k, and one more is being written at a time (a resumed run replaces its own)."""
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        files = 1 if resume else 3 + self.cfg.callbacks.save_top_k
        require_free_space(directory, 3 * weights * files, "this run's checkpoints ([Training] output_dir)")

    def _state(self, epoch: int, metrics: dict, next_batch: int = 0) -> dict:
        """What a checkpoint holds after `epoch` (and `next_batch` batches of the next one)."""
        return {
            "model": self.model.state_dict(), "arch": self.model.arch_name, "epoch": epoch, "metrics": metrics,
            "next_batch": next_batch,
            "config": self.cfg_text, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.settings.scaler.state_dict() if self.settings.scaler else None,
            "early_stopping": self.stopper.state_dict(), "rng": _rng_state(),
            "nonfinite_streak": self.settings.nonfinite_streak,
            "progress": {"best_value": self.progress.best_value, "top_k": self.progress.top_k},
        }

    def _restore(self, checkpoint: Path) -> None:
        state = read_checkpoint(checkpoint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.settings.scaler and state.get("scaler"):
            self.settings.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.settings.nonfinite_streak = state["nonfinite_streak"]
        self.progress.best_value = state["progress"]["best_value"]
        self.progress.top_k = state["progress"]["top_k"]
        self.start_epoch, self.first_batch = state["epoch"] + 1, state.get("next_batch", 0)
        logs = checkpoint.parent / "logs"
        for name, history in (("training_history.json", self.progress.train_history),
                              ("validation_history.json", self.progress.val_history)):
            path = logs / name
            if path.is_file():
                history.extend(h for h in json.loads(path.read_text()) if h["epoch"] < self.start_epoch)
        self.cfg_text = state["config"]
        _set_rng_state(state["rng"])
        logger.info(f"Resuming {checkpoint.parent} after epoch {state['epoch']}"
                    + (f" and {self.first_batch} batches of the next" if self.first_batch else ""))

    def _save_checkpoints(self, epoch: int, value: float, metrics: dict, loggers) -> None:
        run_dir, progress, k = self.run_dir, self.progress, self.cfg.callbacks.save_top_k
        state = self._state(epoch, metrics)
        if is_improvement(value, progress.best_value, self.mode):
            progress.best_value = value
            state["progress"]["best_value"] = value
            save_checkpoint(run_dir / BEST, state)
            loggers.log_best_checkpoint(run_dir / BEST, epoch, metrics)
        if k > 0 and value == value:
            progress.top_k.append([value, epoch])
            progress.top_k.sort(key=lambda item: item[0], reverse=self.mode == "max")
            for _, dropped in progress.top_k[k:]:
                (run_dir / f"checkpoint_epoch_{dropped}.pth").unlink(missing_ok=True)
            progress.top_k = progress.top_k[:k]
            if [value, epoch] in progress.top_k:
                save_checkpoint(run_dir / f"checkpoint_epoch_{epoch}.pth", state)
            state["progress"]["top_k"] = progress.top_k
        save_checkpoint(run_dir / LAST, state)

    def _run_epoch(self, epoch: int, last_epoch: int, tracker: MetricsTracker, loggers,
                   on_epoch_end: Callable[[int, dict], None] | None) -> bool:
        """Train, validate, record and checkpoint one epoch; True when training should stop."""
        first = self.first_batch if epoch == self.start_epoch else 0
        self.train_loader.batch_sampler.set_epoch(epoch, first)
        try:
            train_metrics = train_epoch(self.net, self.train_loader, self.criterion, self.optimizer, self.device,
                                        epoch, self.settings)
        except StepInterrupted as stop:
            self._save_interrupted(epoch, first + stop.batches)
        val_metrics = validate_epoch(self.model, self.val_loader, self.criterion, self.device, epoch, self.settings)
        value = val_metrics[self.monitor]  # a published name: the config's validation checked it
        self.progress.train_history.append(train_metrics)
        self.progress.val_history.append(val_metrics)
        tracker.update({**train_metrics, **val_metrics})
        should_stop = self.stopper.step(value, epoch, self.model)
        self.schedule.step_epoch(value)
        if self.run_dir is not None and self.dist.is_main:
            _write_histories(self.run_dir, self.progress)
            loggers.log_epoch(epoch, {**train_metrics, **val_metrics})
            self._save_checkpoints(epoch, value, val_metrics, loggers)
        if self.dist.is_main:
            logger.info(f"epoch {epoch}/{last_epoch}  loss {train_metrics['train_loss']:.4f}  "
                        f"val_loss {val_metrics['val_loss']:.4f}  {self.monitor} {value:.4f}  "
                        f"val_qwk {val_metrics['val_qwk']:.3f}  lr {train_metrics['lr']:.2e}  "
                        f"{train_metrics['images_per_second']:.1f} img/s")
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**train_metrics, **val_metrics})
        if should_stop:
            logger.info(f"Early stopping: no {self.monitor} improvement for {self.stopper.bad_epochs} epochs")
        return should_stop

    def _save_interrupted(self, epoch: int, batches: int) -> None:
        """Checkpoint the middle of `epoch` (its val metrics are the last epoch's) and stop."""
        metrics = self.progress.val_history[-1] if self.progress.val_history else {}
        save_checkpoint(self.run_dir / LAST, self._state(epoch - 1, metrics, next_batch=batches))
        raise TrainingInterrupted(f"Interrupted after batch {batches} of epoch {epoch}; "
                                  f"saved {self.run_dir / LAST}", self.run_dir)

    def fit(self, on_epoch_end: Callable[[int, dict], None] | None) -> TrainResult:
        cfg, tracker = self.cfg, MetricsTracker([{**t, **v} for t, v in zip(self.progress.train_history,
                                                                              self.progress.val_history)])
        last_epoch = 1 if self.debug.fast_dev_run else cfg.training.n_epochs
        if self.dist.is_main:
            logger.info(f"Run {self.run_dir or '(fast dev run: nothing written)'}: "
                        f"{len(self.train_loader.dataset)} train / {len(self.val_loader.dataset)} val images, "
                        f"{cfg.model.model_arch} on {self.device} x{self.dist.world_size} "
                        f"({str(self.settings.dtype).removeprefix('torch.')}"
                        f"{', channels_last' if self.settings.channels_last else ''})")
        writes = self.run_dir is not None and self.dist.is_main
        # Ctrl-C stops at a step's end and checkpoints, except in a distributed run (whose ranks
        # would have to agree on the step) and a fast dev run (nothing to keep).
        interruptible = writes and not self.dist.enabled
        with create_loggers(cfg, self.run_dir, resume=self.start_epoch > 1 or self.first_batch > 0,
                            enabled=writes) as loggers, \
                stop_requests(enabled=interruptible) as stop:
            self.settings.stop = stop
            for epoch in range(self.start_epoch, last_epoch + 1):
                if stop.is_set():
                    raise TrainingInterrupted(f"Interrupted after epoch {epoch - 1}; saved {self.run_dir / LAST}",
                                              self.run_dir)
                if self._run_epoch(epoch, last_epoch, tracker, loggers, on_epoch_end):
                    break
            best = tracker.best(self.monitor, self.mode) or tracker.history[-1]
            if writes and not (self.run_dir / BEST).exists():
                # The monitored metric was never defined: the last epoch stands in as the best.
                save_checkpoint(self.run_dir / BEST, self._state(int(best["epoch"]), self.progress.val_history[-1]))
                loggers.log_best_checkpoint(self.run_dir / BEST, int(best["epoch"]), self.progress.val_history[-1])
        if cfg.callbacks.restore_best_weights and self.stopper.restore(self.model):
            logger.info(f"Restored the weights of epoch {self.stopper.best_epoch} (best {self.monitor})")
        return TrainResult(run_dir=self.run_dir, best_epoch=int(best["epoch"]),
                           best_metrics={k: v for k, v in best.items() if k.startswith("val_")},
                           history=tracker.history, is_main=self.dist.is_main)


def train_model(cfg: Config, data: DataBundle | None = None,
                on_epoch_end: Callable[[int, dict], None] | None = None, provenance: str = "",
                resume: str | Path | None = None, debug: DebugRun = DebugRun(),
                run_dir: Path | None = None) -> TrainResult:
    """Train per `cfg` in a new run directory (or the empty `run_dir` given), or continue the run of
    `resume` in place.

    `data` lets callers (hyperopt) reuse loaded data; `on_epoch_end(epoch, metrics)` is called after
    each epoch's checkpoints are written and may raise to stop training (e.g. optuna.TrialPruned);
    `provenance` is added to the header of the run's config.ini (e.g. which values a study chose).
    """
    trainer = _Trainer(cfg, data, debug, resume_checkpoint(resume) if resume else None, provenance, run_dir)
    try:
        return trainer.fit(on_epoch_end)
    except OutputError as exc:
        if trainer.run_dir is None or not (trainer.run_dir / LAST).is_file():
            raise
        raise OutputError(f"{exc}; {trainer.run_dir} keeps its last complete checkpoint: make room, then "
                          f"continue with --resume {trainer.run_dir}") from None
    finally:
        shutdown(trainer.dist)
