"""train_model: config -> data -> model -> epochs -> checkpoints and history in a run directory."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from src.config.render import render_ini
from src.config.schema import Config
from src.data.augment import BatchAugmenter
from src.data.dataset import loader_options, make_loader
from src.data.load import DataBundle, load_data
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.engine.settings import LoopSettings, place_model
from src.models.factory import build_model, weight_bytes
from src.models.freeze import check_freeze
from src.models.heads import PooledHead
from src.models.zoo import check_weights, resolve_preprocessing
from src.training.callbacks import resolve_mode
from src.training.distillation import build_distillation
from src.training.ema import RAW_WEIGHTS, WeightEMA
from src.training.feature_cache import build_feature_cache
from src.training.finetune import FreezeSchedule, heads_only
from src.training.loggers import create_loggers
from src.training.loop import NonFiniteGuard, StepInterrupted, train_epoch, validate_epoch
from src.training.loss import build_criterion
from src.training.optimizer import create_optimizer, create_scheduler
from src.training.parallel import (
    freeze_unused_parameters,
    use_sync_batchnorm,
    warn_small_rank_batch,
    wrap_model,
)
from src.training.run_state import RunState
from src.utils.checkpoint import TopKCheckpoints, read_checkpoint, save_checkpoint
from src.utils.device import resolve_device
from src.utils.distributed import (
    DistInfo,
    any_rank,
    barrier,
    broadcast_object,
    init_distributed,
    process_device,
    shutdown,
)
from src.utils.errors import CheckpointError, ConfigError, OutputError, StoppedOnAnotherRank, TrainingInterrupted
from src.utils.interrupt import stop_requests
from src.utils.io import atomic_write_csv, atomic_write_text, remove_temporaries, require_free_space
from src.utils.logging import logger
from src.utils.run_dir import BEST, LAST, create_run_dir
from src.utils.seed import capture_rng_state, restore_rng_state, seed_everything, set_determinism

__all__ = ["train_model", "train_epoch", "validate_epoch", "TrainResult", "DebugRun", "ResumePoint", "resume_point"]


@dataclass
class TrainResult:
    run_dir: Path | None  # None for a --fast-dev-run, which writes nothing
    best_epoch: int
    best_metrics: dict  # validation metrics of the best epoch
    model: torch.nn.Module  # the trained model; with [Callbacks] restore_best_weights, the best epoch's weights
    is_main: bool = True  # False on the non-zero ranks of a distributed run, which write nothing


@dataclass(frozen=True)
class DebugRun:
    """--fast-dev-run: one batch of train and val, nothing written. --overfit-batches N: train and
    validate on the same first N training batches (no shuffling, no augmentation)."""

    fast_dev_run: bool = False
    overfit_batches: int = 0


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to continue from, read once: the caller takes its config, the trainer its state."""

    path: Path
    state: dict


def resume_point(target: str | Path) -> ResumePoint:
    """The checkpoint to continue from: the file itself, or a run directory's last_model.pth."""
    path = Path(target)
    if not path.exists():
        raise CheckpointError(f"{target}: nothing to resume (no such run directory or checkpoint)")
    path = path / LAST if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{target}: nothing to resume (no {LAST} in that run directory)")
    state = read_checkpoint(path)
    if "run_state" not in state:
        raise CheckpointError(f"{path}: holds no training state (an older or a best-model-only checkpoint); "
                              "it can be evaluated but not resumed")
    return ResumePoint(path, state)


@dataclass
class Phase:
    """What an epoch trains and reads: the whole model on images, or its zone heads on cached features."""

    net: torch.nn.Module  # what train_epoch steps (compiled and/or distributed)
    model: torch.nn.Module  # what validate_epoch reads
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    settings: LoopSettings
    prepare: BatchPreparer  # training batches to the model's input (augmented images; features as they are)
    prepare_eval: BatchPreparer


class _Trainer:
    """One training run: construction builds everything and writes nothing; `fit` opens the run
    directory and runs the epochs. Split out of train_model for readability."""

    def __init__(self, cfg: Config, data: DataBundle | None, debug: DebugRun, resume: ResumePoint | None,
                 provenance: str = "", run_dir: Path | None = None) -> None:
        check_weights(cfg.model)  # cheap: before any data work; the weights load with the model
        check_freeze(cfg)
        self.debug, self.resume = debug, resume
        self.provenance, self.given_run_dir = provenance, run_dir
        seed_everything(cfg.training.seed)
        device = resolve_device(cfg.training.device)
        self.dist: DistInfo = init_distributed(device.type)
        self.device = process_device(device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        set_determinism(cfg.training.deterministic, self.device)
        warn_small_rank_batch(cfg.training.batch_size, self.dist)
        # The inputs are checked before any costly work (loading weights, the precision probe, building
        # the model): labels, splits and image paths, the decoded images, then the disk's free space.
        self.data = data or load_data(cfg)
        # The model's normalisation, its weights' (which resolving announces), is the resolved config's
        # alone: the data hold stored pixels, which the batch preparers normalise on the device.
        self.cfg = cfg = resolve_preprocessing(cfg)
        self.train_loader, self.val_loader = self._loaders(self.data.dataset("train"), self.data.dataset("val"))
        self._require_checkpoint_space()
        # Heads on cached features run in fp32 whatever the model's precision: no need to time the model.
        settings = LoopSettings.from_config(cfg, self.device, measure=not heads_only(cfg))
        self.settings = replace(settings, progress=self.dist.is_main, dist=self.dist)
        self.model = place_model(build_model(cfg), self.device, self.settings)
        self.freezing = FreezeSchedule(cfg, self.model, says=self.dist.is_main)  # before the optimizer
        self.feature_phase: Phase | None = None  # made the first epoch that reads cached features
        self.monitor = cfg.callbacks.monitor
        self.mode = resolve_mode(self.monitor, cfg.callbacks.mode)
        self.criterion = build_criterion(cfg, self.data.labels("train"))
        self.teacher = None
        if cfg.distillation.teacher_checkpoint:
            self.teacher, self.criterion = build_distillation(cfg, self.criterion, self.device)
        self.criterion = self.criterion.to(self.device)
        self.optimizer = create_optimizer(self.model, cfg)
        self.ema = WeightEMA(self.model, cfg.training.ema_decay) if cfg.training.ema_decay else None
        steps = -(-len(self.train_loader) // cfg.training.gradient_accumulation_steps)
        self.schedule = create_scheduler(self.optimizer, cfg, self.mode, steps)
        # overfitting a fixed batch means seeing it unchanged; each rank draws its own augmentations
        augmenter = None if debug.overfit_batches else BatchAugmenter(cfg.augmentation, cfg.training.seed,
                                                                     self.dist.rank)
        normalization = Normalization.of(cfg.data)
        self.prepare_train, self.prepare_eval = BatchPreparer(normalization, augmenter), BatchPreparer(normalization)
        self.scaler = torch.amp.GradScaler("cuda") if self.settings.dtype == torch.float16 else None
        self.guard = NonFiniteGuard(self.settings.max_nonfinite_steps)
        callbacks = cfg.callbacks
        self.state = RunState(self.monitor, self.mode, callbacks.early_stopping_min_delta,
                              callbacks.early_stopping_patience)
        self.keeper = TopKCheckpoints(None, callbacks.save_top_k, self.mode)
        self.start_epoch, self.first_batch = 1, 0  # first_batch > 0: resuming inside start_epoch
        self.run_dir: Path | None = None
        if self.dist.enabled:
            self._prepare_for_ddp()
        self.net = wrap_model(self.model, cfg.training.compile, self.dist, self.device)
        if resume is not None:
            self._restore(resume)

    def _prepare_for_ddp(self) -> None:
        """The model as DDP will hold it: without the parameters no step trains, and with
        synchronised BatchNorm where [Training] sync_batchnorm asks for it."""
        cfg, size = self.cfg, self.cfg.data.image_size
        freeze_unused_parameters(self.model, (2, self.model.input_channels, size, size), self.device, self.dist)
        if use_sync_batchnorm(cfg.training.sync_batchnorm, self.model, self.dist, self.device,
                              cfg.training.batch_size):
            # The same parameter and buffer objects in SyncBatchNorm modules: the optimizer and the
            # state dict keys are unchanged.
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            if self.dist.is_main:
                logger.info("BatchNorm synchronised over the processes ([Training] sync_batchnorm)")

    def _loaders(self, train_set, val_set) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
        """The training and validation loaders of these datasets (images, or cached features)."""
        cfg, debug, dist = self.cfg, self.debug, self.dist
        batch, limit, shuffle = cfg.training.batch_size, None, True
        if debug.fast_dev_run:
            limit = batch
        if debug.overfit_batches:
            limit, shuffle, val_set = debug.overfit_batches * batch, False, train_set
        if len(train_set) == 0 or len(val_set) == 0:
            raise ConfigError(f"{cfg.data.labels_csv}: the train and val splits need at least one image each "
                              f"(got {len(train_set)} and {len(val_set)})")
        common = {**loader_options(cfg.training, self.device), "rank": dist.rank, "world_size": dist.world_size}
        train_loader = make_loader(train_set, batch, shuffle=shuffle, seed=cfg.training.seed, limit=limit,
                                   **common)
        val_limit = limit if (debug.fast_dev_run or debug.overfit_batches) else None
        val_loader = make_loader(val_set, cfg.evaluation.batch_size, shuffle=False, limit=val_limit, keep_all=True,
                                 **common)
        if len(train_loader) == 0:
            raise ConfigError(f"[Training] batch_size = {batch}: too few training images for "
                              f"{dist.world_size} processes")
        return train_loader, val_loader

    def _phase(self, epoch: int) -> Phase:
        """Freeze what `epoch` freezes, and what it trains: the heads on cached features while the whole
        backbone is frozen ([Training] feature_cache), else the model."""
        if self.freezing.start(epoch) and self.dist.enabled:  # DDP syncs the weights that trained when wrapped
            size = self.cfg.data.image_size
            freeze_unused_parameters(self.model, (2, self.model.input_channels, size, size), self.device, self.dist)
            self.net = wrap_model(self.model, self.cfg.training.compile, self.dist, self.device)
        if not self.freezing.reads_features(epoch):
            return Phase(self.net, self.model, self.train_loader, self.val_loader, self.settings,
                         self.prepare_train, self.prepare_eval)
        if self.feature_phase is None:
            cache = build_feature_cache(self.model, self.cfg, self.data, self.device, says=self.dist.is_main)
            loaders = self._loaders(cache.dataset(self.data, "train"), cache.dataset(self.data, "val"))
            heads = PooledHead(self.model.head)
            self.feature_phase = Phase(wrap_model(heads, False, self.dist, self.device), heads, *loaders,
                                       replace(self.settings, dtype=torch.float32, channels_last=False),
                                       BatchPreparer(), BatchPreparer())
        return self.feature_phase

    def _open_run_dir(self) -> Path | None:
        """The run directory: the resumed one, or the given or a new one, where config.ini and
        split.csv are written now (whose config text every checkpoint embeds; a resumed run has it
        from its checkpoint)."""
        if self.debug.fast_dev_run:
            return None
        cfg, run_dir = self.cfg, None
        if self.dist.is_main:
            run_dir = self.resume.path.parent if self.resume else self.given_run_dir or create_run_dir(
                cfg.training.output_dir, cfg.model.model_arch, cfg.training.run_name)
            if self.resume:  # half-written files of a killed process
                remove_temporaries(run_dir)
                remove_temporaries(run_dir / "logs")
        run_dir = broadcast_object(run_dir, self.dist)
        if self.resume is None:
            header = f"Resolved configuration of run {run_dir.name}" + (
                f"\n{self.provenance}" if self.provenance else "")
            self.cfg_text = render_ini(cfg, header, documented=False)
            if self.dist.is_main:
                atomic_write_text(run_dir / "config.ini", self.cfg_text)
                atomic_write_csv(run_dir / "split.csv", self.data.split_table())
        self.keeper.run_dir = run_dir
        return run_dir

    def _require_checkpoint_space(self) -> None:
        """Fail before training when the disk cannot hold the run's checkpoints: each holds the
        weights (with EMA, their average too) and up to two optimizer moments per weight; a new run
        keeps best, last and the top-k, and one more is being written at a time (a resumed run
        replaces its own)."""
        if self.debug.fast_dev_run or not self.dist.is_main:
            return  # nothing written here
        directory = self.resume.path.parent if self.resume else self.given_run_dir or Path(
            self.cfg.training.output_dir)
        files = 1 if self.resume else 3 + self.cfg.callbacks.save_top_k
        copies = 3 + (self.cfg.training.ema_decay > 0)  # the raw weights beside their average
        require_free_space(directory, copies * weight_bytes(self.cfg) * files,
                           "this run's checkpoints ([Training] output_dir)")

    def _checkpoint(self, epoch: int, metrics: dict, next_batch: int = 0) -> dict:
        """Everything an exact resume after `epoch` (and `next_batch` batches of the next one)
        needs; the only tensors are the model's (with ema_decay its average, the raw weights beside it)
        and the optimizer's."""
        ema = {RAW_WEIGHTS: self.ema.raw_weights()} if self.ema else {}
        return {
            "model": self.ema.state_dict(self.model) if self.ema else self.model.state_dict(), **ema,
            "arch": self.model.arch_name, "epoch": epoch, "metrics": metrics,
            "next_batch": next_batch,
            "config": self.cfg_text, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "run_state": self.state.state_dict(), "top_k": self.keeper.state_dict(),
            "nonfinite": self.guard.state_dict(), "rng": capture_rng_state(self.device),
        }

    def _restore(self, resume: ResumePoint) -> None:
        state = resume.state
        self.model.load_state_dict(state["model"])
        if self.ema:  # "model" holds the average: continue it, and the raw weights training steps
            self.ema.load(state["model"], state[RAW_WEIGHTS])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state["run_state"])
        self.keeper.load_state_dict(state["top_k"])
        self.guard.load_state_dict(state["nonfinite"])
        self.start_epoch, self.first_batch = state["epoch"] + 1, state["next_batch"]
        self.cfg_text = state["config"]
        restore_rng_state(state["rng"], self.device)
        logger.info(f"Resuming {resume.path.parent} after epoch {state['epoch']}"
                    + (f" and {self.first_batch} batches of the next" if self.first_batch else ""))

    def _write_epoch(self, epoch: int, improved: bool, loggers) -> None:
        """Histories, then checkpoints: rewritten after every epoch, so a crash loses nothing already trained."""
        run_dir, metrics = self.run_dir, self.state.val_history[-1]
        logs = run_dir / "logs"
        atomic_write_text(logs / "training_history.json", json.dumps(self.state.train_history, indent=1))
        atomic_write_text(logs / "validation_history.json", json.dumps(self.state.val_history, indent=1))
        loggers.log_epoch(epoch, {**self.state.train_history[-1], **metrics})
        top_k_path = self.keeper.offer(metrics[self.monitor], epoch)
        checkpoint = self._checkpoint(epoch, metrics)
        if improved:
            save_checkpoint(run_dir / BEST, checkpoint)
            loggers.log_best_checkpoint(run_dir / BEST, epoch, metrics)
        if top_k_path is not None:
            save_checkpoint(top_k_path, checkpoint)
        save_checkpoint(run_dir / LAST, checkpoint)

    def _run_epoch(self, epoch: int, last_epoch: int, loggers, stop: threading.Event,
                   on_epoch_end: Callable[[int, dict], None] | None) -> None:
        """Train, validate, record and checkpoint one epoch."""
        first = self.first_batch if epoch == self.start_epoch else 0
        phase = self._phase(epoch)
        phase.train_loader.batch_sampler.set_epoch(epoch, first)
        phase.prepare.set_epoch(epoch, first)
        try:
            train_metrics = train_epoch(
                phase.net, phase.train_loader, self.criterion, self.optimizer, self.device, epoch, phase.settings,
                scaler=self.scaler, batch_scheduler=self.schedule.scheduler if self.schedule.per_step else None,
                prepare=phase.prepare, teacher=self.teacher, probabilities=self.criterion.probabilities,
                guard=self.guard, stop=stop, after_step=self.ema.update if self.ema else None)
        except StepInterrupted as interrupted:
            self._save_interrupted(epoch, first + interrupted.batches)
        with self.ema.applied() if self.ema else nullcontext():  # the average is what is validated and kept
            val_metrics = validate_epoch(phase.model, phase.val_loader, self.criterion, self.device, epoch,
                                         phase.settings, probabilities=self.criterion.probabilities,
                                         prepare=phase.prepare_eval)
        improved = self.state.record(train_metrics, val_metrics)
        value = val_metrics[self.monitor]  # a published name: the config's validation checked it
        self.schedule.step_epoch(value)
        if self.run_dir is not None and self.dist.is_main:
            self._write_epoch(epoch, improved, loggers)
        if self.dist.is_main:
            logger.info(f"epoch {epoch}/{last_epoch}  loss {train_metrics['train_loss']:.4f}  "
                        f"val_loss {val_metrics['val_loss']:.4f}  {self.monitor} {value:.4f}  "
                        f"val_qwk {val_metrics['val_qwk']:.3f}  lr {train_metrics['lr']:.2e}  "
                        f"{train_metrics['images_per_second']:.1f} img/s")
        if on_epoch_end is not None:
            self._call_on_epoch_end(on_epoch_end, epoch, {**train_metrics, **val_metrics})

    def _call_on_epoch_end(self, on_epoch_end: Callable[[int, dict], None], epoch: int, metrics: dict) -> None:
        """`on_epoch_end` runs on rank 0, which reports, logs and decides (a pruner, a notebook's
        stop); when it raises there, every other rank stops too, at the same epoch."""
        error = None
        if self.dist.is_main:
            try:
                on_epoch_end(epoch, metrics)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks learn of it
                error = exc
        if any_rank(error is not None, self.dist):
            if error is not None:
                raise error
            raise StoppedOnAnotherRank(f"rank 0 stopped training after epoch {epoch}")

    def _load_best_weights(self) -> None:
        """[Callbacks] restore_best_weights: the model ends with best_model.pth's weights."""
        best = self.state.best_epoch
        if self.run_dir is None or not self.dist.is_main or best in (None, self.state.val_history[-1]["epoch"]):
            return  # nothing written, or the model already holds the best weights
        self.model.load_state_dict(read_checkpoint(self.run_dir / BEST)["model"])
        logger.info(f"Restored the weights of epoch {best} (best {self.monitor})")

    def _save_interrupted(self, epoch: int, batches: int) -> None:
        """Checkpoint the middle of `epoch` (its val metrics are the last epoch's) and stop, every
        rank once the checkpoint is written (torchrun stops the others as soon as one exits)."""
        if self.dist.is_main:
            metrics = self.state.val_history[-1] if self.state.val_history else {}
            save_checkpoint(self.run_dir / LAST, self._checkpoint(epoch - 1, metrics, next_batch=batches))
        barrier(self.dist)
        raise TrainingInterrupted(f"Interrupted after batch {batches} of epoch {epoch}; "
                                  f"saved {self.run_dir / LAST}", self.run_dir, self.dist.is_main)

    def fit(self, on_epoch_end: Callable[[int, dict], None] | None) -> TrainResult:
        cfg = self.cfg
        self.run_dir = self._open_run_dir()
        last_epoch = 1 if self.debug.fast_dev_run else cfg.training.n_epochs
        if self.dist.is_main:
            logger.info(f"Run {self.run_dir or '(fast dev run: nothing written)'}: "
                        f"{len(self.train_loader.dataset)} train / {len(self.val_loader.dataset)} val images, "
                        f"{cfg.model.model_arch} on {self.device} x{self.dist.world_size} "
                        f"({str(self.settings.dtype).removeprefix('torch.')}"
                        f"{', channels_last' if self.settings.channels_last else ''})")
        writes = self.run_dir is not None and self.dist.is_main
        # Ctrl-C and SIGTERM stop every rank at the same step's end, with a checkpoint (not in a fast
        # dev run: nothing to keep). The loop agrees on a request made during an epoch; here, on one
        # made between two (e.g. during validation).
        with create_loggers(cfg, self.run_dir, resume=self.start_epoch > 1 or self.first_batch > 0,
                            enabled=writes) as loggers, \
                stop_requests(enabled=self.run_dir is not None) as stop:
            for epoch in range(self.start_epoch, last_epoch + 1):
                if any_rank(stop.is_set(), self.dist):
                    raise TrainingInterrupted(f"Interrupted after epoch {epoch - 1}; saved {self.run_dir / LAST}",
                                              self.run_dir, self.dist.is_main)
                self._run_epoch(epoch, last_epoch, loggers, stop, on_epoch_end)
                # Every rank holds the same validation metrics (gathered), hence the same verdict.
                if self.state.should_stop:
                    if self.dist.is_main:
                        logger.info(f"Early stopping: no {self.monitor} improvement for "
                                    f"{self.state.epochs_without_improvement} epochs")
                    break
            best = self.state.best_metrics()
            if writes and not (self.run_dir / BEST).exists():
                # The monitored metric was never defined: the last epoch stands in as the best.
                save_checkpoint(self.run_dir / BEST, self._checkpoint(int(best["epoch"]), best))
                loggers.log_best_checkpoint(self.run_dir / BEST, int(best["epoch"]), best)
        if self.ema:  # the model ends with the average, as it was validated and checkpointed
            self.ema.copy_to_model()
        if cfg.callbacks.restore_best_weights:
            self._load_best_weights()
        return TrainResult(run_dir=self.run_dir, best_epoch=int(best["epoch"]),
                           best_metrics={k: v for k, v in best.items() if k.startswith("val_")},
                           model=self.model, is_main=self.dist.is_main)


def train_model(cfg: Config, data: DataBundle | None = None,
                on_epoch_end: Callable[[int, dict], None] | None = None, provenance: str = "",
                resume: str | Path | ResumePoint | None = None, debug: DebugRun = DebugRun(),
                run_dir: Path | None = None) -> TrainResult:
    """Train per `cfg` in a new run directory (or the empty `run_dir` given), or continue the run of
    `resume` (a run directory, a checkpoint, or a ResumePoint already read) in place.

    `data` lets callers (hyperopt) reuse loaded data; `on_epoch_end(epoch, metrics)` is called after
    each epoch's checkpoints are written and may raise to stop training (e.g. optuna.TrialPruned);
    `provenance` is added to the header of the run's config.ini (e.g. which values a study chose).
    """
    if resume is not None and not isinstance(resume, ResumePoint):
        resume = resume_point(resume)
    trainer = _Trainer(cfg, data, debug, resume, provenance, run_dir)
    try:
        return trainer.fit(on_epoch_end)
    except OutputError as exc:
        if trainer.run_dir is None or not (trainer.run_dir / LAST).is_file():
            raise
        raise OutputError(f"{exc}; {trainer.run_dir} keeps its last complete checkpoint: make room, then "
                          f"continue with --resume {trainer.run_dir}") from None
    finally:
        shutdown(trainer.dist)
