"""The local backend: a W&B sweep file executed on Optuna, with no W&B server.

A sweep is an Optuna study in the hyperopt storage (a journal under logs/sweeps/ by default, or a
database URL that agents on many machines share) holding the sweep file. Runs are claimed
through the storage, whose WAITING -> RUNNING transition only one worker can win: a grid's
points (and, with run_cap, the run slots) are queued when the sweep is created, so concurrent
agents never repeat a point nor exceed the cap. The agent samples each run's values, stores
them on the trial, and starts the run as its own process (`--mode sweep-run`), which reports
every epoch to the trial (hyperband judges it there) and records how it ended. A run whose
process dies is recorded failed by its agent; a run whose agent dies (SIGKILL takes the run with
it) is failed and queued again by the next agent, through the heartbeat of a database or, for
a journal, by seeing that the agent's process no longer exists.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import click
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from src.config.schema import Config
from src.optimization.objective import is_out_of_memory
from src.optimization.study import (
    HEARTBEAT_S,
    TrialSeededSampler,
    display_location,
    open_storage,
    recover_dead_trials,
    worker_id,
)
from src.sweeps.distributions import grid_points, suggest
from src.sweeps.hyperband import HyperbandPruner
from src.sweeps.outputs import VALUES_ATTR, describe_run, summary, write_outputs
from src.sweeps.run import run_config, sweep_dir, train_run
from src.sweeps.spec import SweepSpec, parse_sweep
from src.training.loggers import init_wandb_run, wandb_config
from src.training.loop import TrainingDiverged
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


def _die_with_parent() -> None:
    """In the run's process: be killed when the agent dies, so a killed agent leaves no orphan run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the heartbeat or pid check still fails the run
        pass


def run_process(command: list[str], env: dict[str, str], store: BaseStorage, trial_id: int) -> int:
    """Run a run's process to its end, beating the trial's heartbeat meanwhile; its exit code."""
    process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    while True:
        try:
            return process.wait(timeout=HEARTBEAT_S)
        except subprocess.TimeoutExpired:
            if isinstance(store, RDBStorage):
                store.record_heartbeat(trial_id)
        except KeyboardInterrupt:  # the run got the same Ctrl-C; let it stop and record itself
            process.wait()
            raise


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


def train_trial(cfg: Config, sweep_id: str, number: int) -> None:
    """What a local run's process does: train the trial's values, report each epoch, record the end."""
    study, spec, store = open_sweep(cfg, sweep_id)
    trial_id = _trial_id(study, store, number)
    trial = optuna.Trial(study, trial_id)
    values = store.get_trial(trial_id).user_attrs[VALUES_ATTR]
    name = f"run{number}"
    failure = None
    try:
        run_cfg = run_config(cfg, spec, sweep_id, values, name)
    except ConfigError as exc:  # each value is valid alone, this combination is not
        failure = str(exc)
    else:
        def on_value(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if epoch < run_cfg.training.n_epochs and trial.should_prune():
                raise optuna.TrialPruned()

        wandb_run = init_wandb_run(run_cfg, f"{sweep_id}-{name}", sweep_id,
                                   {**wandb_config(run_cfg), "sweep": sweep_id, "run": number},
                                   sweep_dir(cfg, sweep_id) / "wandb")
        provenance = f"Sweep {sweep_id}, {name}: " + ", ".join(f"{k} = {v}" for k, v in values.items())
        try:
            result, best = train_run(run_cfg, spec, provenance, wandb_run, on_value)
        except optuna.TrialPruned:
            trial.set_user_attr("run_dir", _run_dir(cfg, sweep_id, name))
            study.tell(number, state=TrialState.PRUNED)
            return
        except (TrainingDiverged, ConfigError) as exc:
            failure = str(exc)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            failure = f"out of memory: {str(exc).splitlines()[0]}"
    if failure is not None:
        trial.set_user_attr("fail_reason", failure)
        trial.set_user_attr("run_dir", _run_dir(cfg, sweep_id, name))
        study.tell(number, state=TrialState.FAIL)
        logger.error(f"sweep {sweep_id} {name} failed: {failure}")
        return
    trial.set_user_attr("run_dir", str(result.run_dir.resolve()))
    study.tell(number, best if math.isfinite(best) else None)


def _run_dir(cfg: Config, sweep_id: str, name: str) -> str:
    runs = sorted((sweep_dir(cfg, sweep_id) / "runs").glob(f"*_{name}"))
    return str(runs[-1].resolve()) if runs else ""


def run_agent(cfg: Config, sweep_id: str, count: int | None, config_path: str,
              overrides: tuple[str, ...]) -> tuple[optuna.Study, SweepSpec]:
    """Run `count` runs of the sweep (all it has left when None), each in its own process."""
    study, spec, store = open_sweep(cfg, sweep_id)
    scfg = storage_config(cfg, sweep_id)
    env = {**os.environ, "CSI_HYPEROPT_STORAGE": scfg.hyperopt.storage}
    out = sweep_dir(cfg, sweep_id)
    logger.info(f"Sweep {sweep_id} in {display_location(scfg)}: {spec.method} over "
                f"{', '.join(p.key for p in spec.params)}; {spec.metric} ({spec.goal})"
                + (f", hyperband at epochs {', '.join(map(str, spec.hyperband.bands))}" if spec.hyperband else "")
                + (f", run_cap {spec.run_cap}" if spec.run_cap else "")
                + (f", target {spec.target:g}" if spec.target is not None else ""))
    done, interrupted, trial = 0, False, None
    try:
        while count is None or done < count:
            recover(study, store)
            reached = target_reached(study, spec)
            if reached is not None:
                logger.info(f"run {reached.number} reached metric.target {spec.target:g}: the sweep is finished")
                break
            trial = claim_run(study, spec, store)
            if trial is None:
                logger.info(f"Sweep {sweep_id} has no run left" + (" (grid complete)" if spec.method == "grid"
                                                                   else f" (run_cap {spec.run_cap} reached)"))
                break
            trial_id = start_run(study, spec, store, trial)
            code = run_process(child_command(config_path, overrides, sweep_id, trial.number), env, store, trial_id)
            end_unfinished(study, store, trial.number, f"the run's process exited with code {code}")
            done += 1
            logger.info(describe_run(study, spec, store.get_trial(trial_id)))
            write_outputs(study, spec, out)
    except KeyboardInterrupt:
        interrupted = True
        if trial is not None:
            end_unfinished(study, store, trial.number, "interrupted (Ctrl-C)")
        logger.warning("Interrupted: finished runs are stored; start an agent again to go on")
    write_outputs(study, spec, out)
    click.echo(summary(study, spec))
    if interrupted:
        raise SystemExit(130)
    return study, spec


def child_command(config_path: str, overrides: tuple[str, ...], sweep_id: str, number: int) -> list[str]:
    """`python main.py --mode sweep-run ...` for one local run, with the agent's config and --set values
    (the storage URL goes through the environment, keeping any password off the process list)."""
    main = Path(__file__).resolve().parents[2] / "main.py"
    command = [sys.executable, str(main), "--mode", "sweep-run", "--config", config_path, "--sweep-id", sweep_id,
               "--trial", str(number)]
    for text in overrides:
        if not text.lower().startswith("hyperopt.storage="):  # passed in the environment instead
            command += ["--set", text]
    return command
