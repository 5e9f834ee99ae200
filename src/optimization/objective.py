"""One trial: suggested values -> trial config -> train_model, reporting the metric every epoch."""

from __future__ import annotations

import dataclasses
import gc
import math
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.data.load import DataBundle, load_data
from src.data.split import fold_splits, plan_folds
from src.optimization.search_space import suggest
from src.optimization.study import study_dir, worker_id
from src.training.loggers import WandbLogger, init_wandb_run, wandb_config
from src.training.trainer import train_model
from src.utils.errors import ConfigError, TrainingDiverged, TrialFailed, first_line
from src.utils.run_dir import create_run_dir


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class SharedDatasets:
    """Loaded datasets (in memory) shared by trials whose [Data] settings and split seed agree: nothing
    is reloaded. The decoded images on disk are src/data/cache.py's."""

    def __init__(self) -> None:
        self._bundles: dict[tuple, DataBundle] = {}
        self._lock = threading.Lock()

    def get(self, cfg: Config) -> DataBundle:
        key = (cfg.data, cfg.training.seed)
        with self._lock:
            if key not in self._bundles:
                self._bundles[key] = load_data(cfg)
            return self._bundles[key]


class Objective:
    """Called by Optuna once per trial; returns the trial's best per-epoch value of [Hyperopt] metric
    (with cv_folds: its mean over the folds, each fold in <trial run>/fold_<k>/).

    `suggest_params(trial)` gives the trial's 'Section.key' values (default: one of every key of `space`).
    """

    def __init__(self, cfg: Config, space: dict[str, BaseDistribution], data: SharedDatasets,
                 suggest_params: Callable[[optuna.Trial], dict[str, Any]] | None = None) -> None:
        self.cfg, self.data = cfg, data
        self.suggest_params = suggest_params or partial(suggest, space=space)
        self.trials_dir = study_dir(cfg) / "trials"

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        params = self.suggest_params(trial)
        cfg = self._trial_config(trial, params)
        # Made here, not by the training, so that a pruned or failed trial also records where it ran.
        run_dir = create_run_dir(self.trials_dir, cfg.model.model_arch, cfg.training.run_name)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        with self._wandb_logger(trial, cfg) as wandb_logger:
            return self._train(trial, cfg, params, run_dir, wandb_logger)

    def _trial_config(self, trial: optuna.Trial, params: dict[str, Any]) -> Config:
        fixed = {"Training.n_epochs": self.cfg.hyperopt.max_epochs,
                 "Training.output_dir": str(self.trials_dir), "Training.run_name": f"trial{trial.number}"}
        try:
            return apply_overrides(self.cfg, {**params, **fixed}, origin=f"trial {trial.number}")
        except ConfigError as exc:  # each value is valid alone, this combination is not
            trial.set_user_attr("fail_reason", str(exc))
            raise TrialFailed(str(exc)) from None

    def _train(self, trial: optuna.Trial, cfg: Config, params: dict[str, Any], run_dir: Path,
               wandb_logger) -> float:
        """The trial's value: the best per-epoch metric of one training, reported every epoch; with
        [Hyperopt] cv_folds, the mean of the folds' best values, reported after each fold."""
        n_folds, data = self.cfg.hyperopt.cv_folds, self.data.get(cfg)
        if not n_folds:
            return self._fit(trial, cfg, params, data, run_dir, run_dir, wandb_logger, report_epochs=True)
        folds, fold_values = plan_folds(data.table, n_folds, cfg.training.seed), []
        for k in range(1, n_folds + 1):
            fold_run = run_dir / f"fold_{k}"
            fold_run.mkdir()
            fold_values.append(self._fit(trial, cfg, params, data.with_splits(fold_splits(folds, k)), fold_run,
                                         run_dir, wandb_logger, report_epochs=False, fold=k))
            trial.set_user_attr("fold_values", fold_values)
            mean = sum(fold_values) / k
            trial.report(mean, k)
            if k < n_folds and trial.should_prune():  # a finished trial keeps its value
                raise optuna.TrialPruned(f"pruned after fold {k} with mean {self.cfg.hyperopt.metric} {mean:.4f}")
        return mean

    def _fit(self, trial: optuna.Trial, cfg: Config, params: dict[str, Any], data: DataBundle, run_dir: Path,
             trial_dir: Path, wandb_logger, report_epochs: bool, fold: int = 0) -> float:
        """Train one model in `run_dir`; its best per-epoch metric. `report_epochs`: report each epoch's
        value to the trial and prune by it. A failure fails the trial (TrialFailed)."""
        metric, values = self.cfg.hyperopt.metric, []  # the config's validation checked the name

        def on_epoch_end(epoch: int, metrics: dict) -> None:
            if wandb_logger is not None:
                step = epoch + max(fold - 1, 0) * cfg.training.n_epochs
                wandb_logger.log_epoch(step, {**metrics, "fold": fold} if fold else metrics)
            value = float(metrics[metric])
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged: {metric} is {value} after epoch {epoch}")
            values.append(value)
            if report_epochs:
                trial.report(value, epoch)
                if epoch < cfg.training.n_epochs and trial.should_prune():  # a finished trial keeps its value
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} with {metric} {value:.4f}")

        provenance = (f"Hyperopt study {self.cfg.hyperopt.study_name}, trial {trial.number}"
                      + (f", fold {fold} of {self.cfg.hyperopt.cv_folds}" if fold else "") + ": "
                      + ", ".join(f"{k} = {v}" for k, v in params.items()))
        # The trial's W&B run is this objective's, which also records pruning: no second one per training.
        quiet = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, wandb_project=""))
        failure = None
        try:
            train_model(quiet, data, on_epoch_end=on_epoch_end, provenance=provenance, run_dir=run_dir)
        except (TrainingDiverged, ConfigError) as exc:  # ConfigError: e.g. a batch above the train split
            failure = str(exc)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(exc):
                raise
            failure = f"out of memory: {first_line(exc)}"
        if failure is not None:
            if not any(path.is_file() for path in trial_dir.rglob("*")):  # refused before writing anything
                shutil.rmtree(trial_dir, ignore_errors=True)
                trial.set_user_attr("run_dir", None)
            release_memory()  # outside the except block: the failed run's frames and tensors are gone
            trial.set_user_attr("fail_reason", failure)
            raise TrialFailed(failure)
        return max(values) if self.cfg.hyperopt.direction == "maximize" else min(values)

    @contextmanager
    def _wandb_logger(self, trial: optuna.Trial, cfg: Config) -> Iterator[WandbLogger | None]:
        """A W&B run per trial (when [Logging] wandb_project is set), grouped by study; its summary
        `state` says complete, pruned or failed."""
        study = self.cfg.hyperopt.study_name
        run = init_wandb_run(cfg, f"{study}-trial{trial.number}", study,
                             {**wandb_config(cfg), "trial": trial.number}, study_dir(cfg) / "wandb")
        if run is None:
            yield None
            return
        wandb_logger, outcome = WandbLogger(run), "failed"
        try:
            yield wandb_logger
            outcome = "complete"
        except optuna.TrialPruned:
            outcome = "pruned"
            raise
        finally:
            run.summary["state"] = outcome
            wandb_logger.close(failed=outcome == "failed")


def keep_best_checkpoints(study: optuna.Study) -> None:
    """Delete the checkpoints of finished trials except the best one's; histories and configs stay."""
    finished = study.get_trials(deepcopy=False,
                                states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    best = study.best_trial.number if complete else None
    for trial in finished:
        if trial.number != best and trial.user_attrs.get("run_dir"):
            for checkpoint in Path(trial.user_attrs["run_dir"]).rglob("*.pth"):  # cv_folds: in fold_<k>/
                checkpoint.unlink(missing_ok=True)
