"""The local backend's sweep, kept in an Optuna storage: created, joined, and claimed run by run.

A sweep is an Optuna study in the hyperopt storage (a journal under logs/sweeps/ by default, or a
database URL that agents on many machines share) holding the sweep file. Runs are claimed
through the storage, whose WAITING -> RUNNING transition only one worker can win: a grid's
points (and, with run_cap, the run slots) are queued when the sweep is created, so concurrent
agents never repeat a point nor exceed the cap. A run whose agent died is failed and queued
again by the next agent: a database notices through the run's heartbeat, a journal (one host)
by seeing that the agent's process no longer exists.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from src.config.schema import Config
from src.optimization.runner import quiet_optuna
from src.optimization.study import (
    TrialSeededSampler,
    display_location,
    open_storage,
    recover_dead_trials,
    worker_id,
)
from src.sweeps.distributions import grid_points, suggest
from src.sweeps.hyperband import HyperbandPruner
from src.sweeps.outputs import VALUES_ATTR
from src.sweeps.spec import SweepSpec, parse_sweep
from src.utils.errors import ConfigError
from src.utils.logging import logger

SPEC_ATTR = "sweep_file"  # study user attrs: the sweep file's text, and where it came from
ORIGIN_ATTR = "sweep_file_path"


def storage_config(cfg: Config, sweep_id: str) -> Config:
    """cfg with [Hyperopt] naming the sweep's study and storage: [Hyperopt] storage (--storage) when set,
    else the journal logs/sweeps/<id>.log."""
    location = cfg.hyperopt.storage or str(Path(cfg.logging.log_dir) / "sweeps" / f"{sweep_id}.log")
    return dataclasses.replace(cfg, hyperopt=dataclasses.replace(cfg.hyperopt, study_name=sweep_id,
                                                                 storage=location))


def journal_exists(cfg: Config, sweep_id: str) -> bool:
    return (Path(cfg.logging.log_dir) / "sweeps" / f"{sweep_id}.log").is_file()


def new_sweep_id(spec: SweepSpec, name: str | None) -> str:
    """The sweep's name when one is given (--sweep-name or the file's name), else 8 random characters."""
    chosen = name or spec.name
    return chosen.replace(" ", "-") if chosen else secrets.token_hex(4)


def create_sweep(cfg: Config, spec: SweepSpec, sweep_id: str) -> optuna.Study:
    """Store a new sweep: the study, the sweep file, and the queued grid points or run slots."""
    quiet_optuna()
    scfg = storage_config(cfg, sweep_id)
    store = open_storage(scfg)
    try:
        study = optuna.create_study(storage=store, study_name=sweep_id, direction=spec.direction)
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(f"sweep {sweep_id} already exists in {display_location(scfg)}; choose another "
                          "--sweep-name, or run agents on it with --mode sweep-agent") from None
    study.set_user_attr(SPEC_ATTR, spec.text)
    study.set_user_attr(ORIGIN_ATTR, spec.path)
    study.set_user_attr("metric", spec.metric)
    if spec.method == "grid":
        for point in grid_points(spec.params)[:spec.run_cap]:
            study.enqueue_trial(point, skip_if_exists=False)
    elif spec.run_cap:
        for _ in range(spec.run_cap):
            study.enqueue_trial({}, skip_if_exists=False)
    return study


def _sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.method == "bayes":  # the liar spreads out runs that are running at the same time
        return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True,
                                                                       constant_liar=True), seed)
    return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)


def open_sweep(cfg: Config, sweep_id: str) -> tuple[optuna.Study, SweepSpec, BaseStorage]:
    """Join a stored sweep; its sweep file is checked again against this machine's config."""
    quiet_optuna()
    scfg = storage_config(cfg, sweep_id)
    if "://" not in scfg.hyperopt.storage and not Path(scfg.hyperopt.storage).is_file():
        raise ConfigError(f"sweep {sweep_id}: not found in {display_location(scfg)}; create it with --mode sweep, "
                          "or pass the --storage it was created in")
    store = open_storage(scfg, create=False)
    try:
        stored = optuna.load_study(study_name=sweep_id, storage=store)
    except KeyError:
        raise ConfigError(f"sweep {sweep_id}: no such sweep in {display_location(scfg)}") from None
    if SPEC_ATTR not in stored.user_attrs:
        raise ConfigError(f"{sweep_id} in {display_location(scfg)} is a hyperopt study, not a sweep")
    spec = parse_sweep(stored.user_attrs[SPEC_ATTR], f"sweep {sweep_id} ({stored.user_attrs[ORIGIN_ATTR]})", cfg)
    pruner = (HyperbandPruner(spec.hyperband, spec.goal == "maximize") if spec.hyperband
              else optuna.pruners.NopPruner())
    study = optuna.load_study(study_name=sweep_id, storage=store, sampler=_sampler(spec, cfg.training.seed),
                              pruner=pruner)
    return study, spec, store


def _trial_id(study: optuna.Study, store: BaseStorage, number: int) -> int:
    return store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study.study_name), number)


def claim_run(study: optuna.Study, spec: SweepSpec, store: BaseStorage) -> optuna.Trial | None:
    """The next run: a queued one (grid point, run slot, or a run whose agent died), or with neither
    grid nor run_cap a new one; None when the sweep is exhausted. The storage lets one worker win."""
    for queued in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = _trial_id(study, store, queued.number)
        try:
            if store.set_trial_state_values(trial_id, TrialState.RUNNING):
                return optuna.Trial(study, trial_id)
        except UpdateFinishedTrialError:
            continue
    if spec.method == "grid" or spec.run_cap:
        return None
    return study.ask()


def target_reached(study: optuna.Study, spec: SweepSpec) -> optuna.trial.FrozenTrial | None:
    """The first complete run whose value reaches metric.target, if any."""
    if spec.target is None:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (t.value >= spec.target) if spec.goal == "maximize" else (t.value <= spec.target):
            return t
    return None


def recover(study: optuna.Study, store: BaseStorage) -> None:
    """Fail, and queue again, the runs whose agent died."""
    for number in recover_dead_trials(study, store):
        logger.warning(f"run {number} was left running by an agent that died; marked failed and queued again")
    fail_stale_trials(study)  # database storages: trials whose heartbeat stopped


def start_run(study: optuna.Study, spec: SweepSpec, store: BaseStorage, trial: optuna.Trial) -> int:
    """Sample and store the run's values on its trial; returns the trial id."""
    trial.set_user_attr("worker", worker_id())
    trial_id = _trial_id(study, store, trial.number)
    if isinstance(store, RDBStorage):
        store.record_heartbeat(trial_id)
    trial.set_user_attr(VALUES_ATTR, suggest(trial, spec.params, grid=spec.method == "grid"))
    return trial_id


def end_unfinished(study: optuna.Study, store: BaseStorage, number: int, reason: str) -> None:
    """Record a run failed unless its process recorded how it ended."""
    trial_id = _trial_id(study, store, number)
    if store.get_trial(trial_id).state == TrialState.RUNNING:
        store.set_trial_user_attr(trial_id, "fail_reason", reason)
        try:
            study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile by another agent's recovery
            pass
