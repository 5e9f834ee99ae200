"""Where a study lives, how it samples and prunes, and how trials of dead workers are recovered.

Storage: by default a journal file <log_dir>/hyperopt/<study>.log (one machine, any number of
processes); `[Hyperopt] storage` may instead name a journal file path or a database URL
(sqlite:///..., postgresql://...) that workers on many machines share. Database workers send a
heartbeat, so a trial whose worker died is failed and queued again; journal workers achieve the
same by checking whether the process that ran a trial on this host is still alive.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from functools import partial
from importlib.util import find_spec
from pathlib import Path

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from src.config.schema import Config, HyperoptConfig
from src.optimization.search_space import grid
from src.utils.errors import ConfigError, first_line

HEARTBEAT_S = 10  # database workers mark their running trial alive this often...
GRACE_S = 60  # ...and a trial not marked for this long belongs to a dead worker
MAX_RETRY = 2  # a trial whose worker died is run again at most this many times
_CONNECT_ATTEMPTS = 3


def study_dir(cfg: Config) -> Path:
    """<[Hyperopt] output_dir>/<study>: best_params.json, trials.csv, plots, and trial runs in trials/."""
    return Path(cfg.hyperopt.output_dir) / cfg.hyperopt.study_name


def storage_location(cfg: Config) -> str:
    """The storage URL or journal file path of the study."""
    hp = cfg.hyperopt
    return hp.storage or str(Path(cfg.logging.log_dir) / "hyperopt" / f"{hp.study_name}.log")


def display_location(cfg: Config) -> str:
    """storage_location as opened (database driver included), any password hidden: for logs and for
    the optuna-dashboard command line."""
    location = storage_location(cfg)
    if "://" not in location:
        return location
    try:
        url = sqlalchemy.engine.make_url(_with_installed_driver(location))
        return url.render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return location.split("@")[-1]  # unparsable: show no more than the host part


def _with_installed_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; fall back to psycopg2 when only that is installed."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.drivername == "postgresql" and not find_spec("psycopg") and find_spec("psycopg2"):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def open_storage(cfg: Config, create: bool = True) -> BaseStorage:
    """The study's storage; with `create` False a missing journal file is an error."""
    if not re.fullmatch(r"[\w.-]+", cfg.hyperopt.study_name):
        raise ConfigError(f"[Hyperopt] study_name = {cfg.hyperopt.study_name!r}: "
                          "use letters, digits, '_', '-' and '.'")
    location = storage_location(cfg)
    if "://" not in location:
        path = Path(location)
        if not create and not path.is_file():
            raise ConfigError(f"{path}: no hyperopt study stored here; "
                              "run --mode hyperopt first or pass --storage")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    for attempt in range(_CONNECT_ATTEMPTS):
        try:
            return RDBStorage(_with_installed_driver(location), heartbeat_interval=HEARTBEAT_S,
                              grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRY))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            error = exc  # workers starting together race to create Optuna's tables: try again
            time.sleep(1 + attempt)
        except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as exc:
            error = exc
            break
    raise ConfigError(f"[Hyperopt] storage = {display_location(cfg)}: cannot open it: {first_line(error)}")


class TrialSeededSampler(BaseSampler):
    """Samples trial N with its own sampler seeded with seed + N.

    A study is reproducible from its seed, yet neither a resumed run nor a second worker replays
    the draws of another (one shared seed would have every worker suggest the same values).
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._samplers: dict[int, BaseSampler] = {}  # running trials only; each belongs to one thread

    def _of(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = self._make(self._seed + trial.number)
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def _sampler(name: str, space: dict[str, BaseDistribution], seed: int) -> BaseSampler:
    samplers = optuna.samplers
    if name == "tpe":
        return samplers.TPESampler(seed=seed, constant_liar=True)  # liar: parallel trials spread out
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return samplers.GPSampler(seed=seed)
    if name == "grid":
        return samplers.GridSampler(grid(space), seed=seed)
    return samplers.QMCSampler(seed=seed)


def make_sampler(cfg: Config, space: dict[str, BaseDistribution]) -> BaseSampler:
    """The [Hyperopt] sampler, seeded per trial from [Training] seed."""
    _sampler(cfg.hyperopt.sampler, space, cfg.training.seed)  # fail now, not in the first trial
    return TrialSeededSampler(partial(_sampler, cfg.hyperopt.sampler, space), cfg.training.seed)


def objective_name(hp: HyperoptConfig) -> str:
    """What a study optimises: [Hyperopt] metric, or its mean over cv_folds folds."""
    return f"{hp.metric} (mean of {hp.cv_folds} folds)" if hp.cv_folds else hp.metric


def make_pruner(hp: HyperoptConfig) -> optuna.pruners.BasePruner:
    """Pruners judge what trials report at each step: the metric per epoch, or with cv_folds the running
    mean after each fold; the median pruner spares each trial's first step."""
    if hp.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if hp.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=hp.cv_folds or hp.max_epochs,
                                              reduction_factor=3)
    if hp.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, space: dict[str, BaseDistribution], storage: BaseStorage,
               sampler: BaseSampler | None = None, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study or join the stored one of the same name (whose metric/direction must match);
    sampler and pruner default to the [Hyperopt] ones."""
    hp = cfg.hyperopt
    study = optuna.create_study(storage=storage, study_name=hp.study_name, direction=hp.direction,
                                sampler=sampler or make_sampler(cfg, space), pruner=pruner or make_pruner(hp),
                                load_if_exists=True)
    stored_direction = study.direction.name.lower()
    objective = objective_name(hp)
    stored_metric = study.user_attrs.get("metric", objective)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        stored_metric = objective  # nothing measured yet: a corrected metric name may replace the old one
    if stored_direction != hp.direction or stored_metric != objective:
        raise ConfigError(f"[Hyperopt] study {hp.study_name} in {display_location(cfg)} optimises "
                          f"{stored_metric} ({stored_direction}), not {objective} ({hp.direction}); "
                          "use another study_name")
    study.set_user_attr("metric", objective)
    return study


def worker_id() -> str:
    """host:pid of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def recover_dead_trials(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Fail and queue again the running trials whose worker process on this host has exited.

    Database storages do this through their heartbeat; a journal file has none, but it lives on
    one host, where a worker's pid tells whether it still runs. Returns the recovered trial numbers.
    """
    if not isinstance(storage, JournalStorage):
        return []
    host, recovered = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker recovered it first
            continue
        RetryHeartbeatStaleTrialCallback(MAX_RETRY)(study, storage.get_trial(trial_id))
        recovered.append(trial.number)
    return recovered
