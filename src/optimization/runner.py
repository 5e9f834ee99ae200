"""The one study runner: hyperopt, the sweep backend and notebooks search through `run_study`, and
train with a study's outcome through `train_best`.

A study adds `[Hyperopt] n_trials` trials to the stored study of its name, so running it again
continues an interrupted study, and several processes or machines pointed at one storage share
the work. The runner owns what every search needs around Optuna's loop: the search space checked
before anything is stored, recovery of trials whose worker died, the data loaded once for every
trial, per-trial clean-up and report line, interrupt handling and the report files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from src.config.loader import apply_overrides, parse_assignment
from src.config.schema import Config
from src.data.load import load_data
from src.optimization.objective import Objective, SharedDatasets, keep_best_checkpoints, release_memory
from src.optimization.report import best_params, describe_trial, write_report
from src.optimization.search_space import parse_space
from src.optimization.study import display_location, objective_name, open_storage, open_study, recover_dead_trials
from src.training.trainer import TrainResult, train_model
from src.utils.device import resolve_device
from src.utils.errors import ConfigError, TrialFailed
from src.utils.logging import logger

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class StudyOutcome:
    study: optuna.Study
    report_dir: Path  # best_params.json (once a trial completed), trials.csv, plots
    interrupted: bool  # Ctrl-C stopped it; the finished trials are stored and the report written

    @property
    def best_params(self) -> dict | None:
        """The content of best_params.json, or None when no trial has completed."""
        return best_params(self.study)


def quiet_optuna() -> None:
    """The per-trial line replaces Optuna's own logging; its experimental notices are noise here."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


WORKERS_SCRIPT = "scripts/gpu_workers.sh"


def require_worker_processes(cfg: Config, mode: str, device: torch.device | None = None) -> None:
    """A search on GPUs runs one worker process per GPU (WORKERS_SCRIPT), all on one study storage,
    each with its own GPU, CUDA context and random generators. Refused: trials in threads of one
    process (n_jobs > 1), which would share one GPU and its generator, and a search under torchrun,
    whose processes would each run other trials while DDP expects them to train one model.
    `device`: where trials train (default: [Training] device here)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"--mode {mode} runs one worker process per GPU, not under torchrun: start them with "
                          f"{WORKERS_SCRIPT} python main.py --mode {mode} ...")
    device = device or resolve_device(cfg.training.device)
    if cfg.hyperopt.n_jobs > 1 and device.type == "cuda":
        raise ConfigError(f"[Hyperopt] n_jobs = {cfg.hyperopt.n_jobs}: trials in threads would share one GPU and "
                          f"its random generator; set n_jobs = 1 and run one worker process per GPU on the same "
                          f"storage: {WORKERS_SCRIPT} python main.py --mode {mode} ...")


def run_study(cfg: Config, *, space: dict[str, BaseDistribution] | None = None,
              sampler: BaseSampler | None = None, pruner: BasePruner | None = None,
              suggest_params: Callable[[optuna.Trial], dict[str, Any]] | None = None,
              callbacks: Sequence[TrialCallback] = ()) -> StudyOutcome:
    """Run `[Hyperopt] n_trials` more trials of the study `cfg` names, then write its report.

    `[Hyperopt]` gives the study's name, storage, metric, direction, epochs per trial, trial count,
    timeout and threads. A caller whose search the section cannot express (a sweep file) passes
    `space` ('Section.key' -> distribution, default: the section's lines), `sampler`, `pruner`
    (defaults: the section's, seeded from [Training] seed), `suggest_params(trial)` (default: ask
    the trial for every key of `space`) and `callbacks(study, trial)` run after each trial.
    """
    hp = cfg.hyperopt
    require_worker_processes(cfg, "hyperopt")
    space = parse_space(cfg) if space is None else space  # a bad line fails here, before anything is stored
    quiet_optuna()
    storage = open_storage(cfg)
    study = open_study(cfg, space, storage, sampler=sampler, pruner=pruner)

    def recover() -> None:
        for number in recover_dead_trials(study, storage):
            logger.warning(f"trial {number} was left running by a worker that died; "
                           "marked failed and queued again")

    recover()
    data = SharedDatasets()
    data.get(cfg)  # decode and cache the images once, before the first trial
    logger.info(f"Study {hp.study_name} in {display_location(cfg)}: {len(study.trials)} trials so far, "
                f"{hp.n_trials} more to run; {objective_name(hp)} ({hp.direction}), "
                f"{type(study.sampler).__name__ if sampler else hp.sampler + ' sampler'}, "
                f"{type(study.pruner).__name__ if pruner else hp.pruner + ' pruner'}, "
                f"{hp.max_epochs} epochs per {'fold' if hp.cv_folds else 'trial'}")

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        release_memory()
        keep_best_checkpoints(study)
        recover()
        logger.info(describe_trial(study, trial))

    interrupted = False
    try:
        study.optimize(Objective(cfg, space, data, suggest_params), n_trials=hp.n_trials,
                       timeout=hp.timeout or None, n_jobs=hp.n_jobs, catch=(TrialFailed,),
                       callbacks=[after_trial, *callbacks])
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("Interrupted: the finished trials are stored; run the same command to continue")
    return StudyOutcome(study, write_report(study, cfg), interrupted)


def _read_best_params(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("best_params"), dict):
        raise ConfigError(f"{path}: no best_params object; expected the best_params.json of --mode hyperopt")
    return payload


def _stored_best_params(cfg: Config) -> dict:
    quiet_optuna()
    storage = open_storage(cfg, create=False)
    try:
        study = optuna.load_study(study_name=cfg.hyperopt.study_name, storage=storage)
    except KeyError:
        raise ConfigError(f"[Hyperopt] study_name = {cfg.hyperopt.study_name}: no such study in "
                          f"{display_location(cfg)}; pass --study-name or --hyperparams FILE") from None
    payload = best_params(study)
    if payload is None:
        raise ConfigError(f"Study {cfg.hyperopt.study_name} in {display_location(cfg)} has no complete trial")
    return payload


def train_best(cfg: Config, hyperparams: str | Path | None = None) -> TrainResult:
    """Train for [Training] n_epochs with a study's best values: those of the best_params.json file
    `hyperparams`, else those of the stored study `cfg` names. The run's config.ini says which."""
    if hyperparams:
        source, payload = str(hyperparams), _read_best_params(Path(hyperparams))
    else:
        source, payload = display_location(cfg), _stored_best_params(cfg)
    params = payload["best_params"]
    for key in params:  # every key is checked before anything is trained or written
        try:
            parse_assignment(f"{key}=", "key")
        except ConfigError as exc:
            raise ConfigError(f"{source}: searched key {key} is not a setting any more ({exc}); "
                              "rerun the study or remove it from best_params") from None
    tuned = apply_overrides(cfg, params, origin=f"{source}:")
    origin = (f"study {payload.get('study_name')} (trial {payload.get('best_trial')}, "
              f"{payload.get('metric')} = {payload.get('best_value')}) from {source}")
    values = "\n".join(f"  {key} = {value}" for key, value in params.items())
    data = load_data(tuned)  # the inputs are checked before the announcement
    logger.info(f"Training with the best hyperparameters of {origin}:\n{values}")
    return train_model(tuned, data, provenance=f"Hyperparameters of {origin}:\n{values}")
