"""hyperopt mode: search the [Hyperopt] space with Optuna; train-optimized: train with the best values found.

Each hyperopt run adds n_trials trials to the stored study of the same name, so running the same
command again continues an interrupted study, and several processes or machines pointed at one
storage share the work.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click
import optuna

from src.cli.train import report
from src.config.loader import apply_overrides, parse_assignment
from src.config.schema import Config
from src.optimization.objective import (
    DataCache,
    Objective,
    TrialFailed,
    keep_best_checkpoints,
    release_memory,
)
from src.optimization.report import best_params, describe_trial, summary, write_report
from src.optimization.search_space import parse_space
from src.optimization.study import display_location, open_storage, open_study, recover_dead_trials
from src.training.trainer import TrainResult, train_model
from src.utils.errors import ConfigError, CSIError
from src.utils.logging import logger


def _quiet_optuna() -> None:
    """The per-trial line below replaces Optuna's own logging; its experimental notices are noise here."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_hyperopt(cfg: Config, options: dict[str, Any]) -> optuna.Study:
    hp = cfg.hyperopt
    space = parse_space(cfg)  # a bad line fails here, before anything is stored or trained
    _quiet_optuna()
    storage = open_storage(cfg)
    study = open_study(cfg, space, storage)

    def recover() -> None:
        for number in recover_dead_trials(study, storage):
            logger.warning(f"trial {number} was left running by a worker that died; "
                           "marked failed and queued again")

    recover()
    data = DataCache()
    data.get(cfg)  # decode and cache the images once, before the first trial
    logger.info(f"Study {hp.study_name} in {display_location(cfg)}: {len(study.trials)} trials so far, "
                f"{hp.n_trials} more to run; {hp.metric} ({hp.direction}), {hp.sampler} sampler, {hp.pruner} "
                f"pruner, {hp.max_epochs} epochs per trial")
    objective = Objective(cfg, space, data)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        release_memory()
        keep_best_checkpoints(study)
        recover()
        logger.info(describe_trial(study, trial))

    interrupted = False
    try:
        study.optimize(objective, n_trials=hp.n_trials, timeout=hp.timeout or None, n_jobs=hp.n_jobs,
                       catch=(TrialFailed,), callbacks=[after_trial])
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("Interrupted: the finished trials are stored; run the same command to continue")
    out = write_report(study, cfg)
    click.echo(summary(study, cfg))
    if interrupted:
        raise SystemExit(130)  # the shell's code for Ctrl-C: a script does not go on as if it had finished
    if best_params(study) is None:
        raise CSIError(f"Study {hp.study_name}: no trial completed; see {out / 'trials.csv'} for why")
    click.echo(f"Results        {out}")
    click.echo(f"Dashboard      optuna-dashboard {display_location(cfg)}")
    return study


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
    _quiet_optuna()
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


def run_train_optimized(cfg: Config, options: dict[str, Any]) -> TrainResult:
    """Train for [Training] n_epochs with a study's best values (file or store); config.ini says which."""
    if options.get("hyperparams"):
        source = options["hyperparams"]
        payload = _read_best_params(Path(source))
    else:
        source = display_location(cfg)
        payload = _stored_best_params(cfg)
    params = payload["best_params"]
    for key in params:
        try:
            parse_assignment(f"{key}=", "key")
        except ConfigError as exc:
            raise ConfigError(f"{source}: searched key {key} is not a setting any more ({exc}); "
                              "rerun the study or remove it from best_params") from None
    tuned = apply_overrides(cfg, params, origin=f"{source}:")
    origin = (f"study {payload.get('study_name')} (trial {payload.get('best_trial')}, "
              f"{payload.get('metric')} = {payload.get('best_value')}) from {source}")
    values = "\n".join(f"  {key} = {value}" for key, value in params.items())
    logger.info(f"Training with the best hyperparameters of {origin}:\n{values}")
    result = train_model(tuned, provenance=f"Hyperparameters of {origin}:\n{values}")
    report(result)
    return result
