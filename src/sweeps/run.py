"""One sweep run, in its own process: parameter values -> the INI config -> train_model.

W&B's agent passes the values on the command line (`--name=value`, its `${args}`) and in
`wandb.config` to `--mode sweep-run`; the local agent stores them on the run's Optuna trial and
starts the process. Either way they are applied onto config.ini with the usual validation, and
the run's config.ini records them. A process per run releases all its memory (GPU memory above
all) when the run ends, which W&B's in-process `function=` agent does not.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.data.load import DataBundle
from src.optimization.objective import SharedDatasets, is_out_of_memory
from src.sweeps.local import open_sweep
from src.sweeps.outputs import VALUES_ATTR, sweep_dir
from src.sweeps.spec import SweepSpec
from src.training.loggers import WandbLogger, init_wandb_run, wandb_config
from src.training.trainer import TrainResult, train_model
from src.utils.errors import ConfigError, TrainingDiverged, first_line
from src.utils.run_dir import BEST, create_run_dir


def run_config(cfg: Config, spec: SweepSpec, sweep_id: str, values: dict[str, Any], run_name: str) -> Config:
    """The run's config: `cfg` with the sweep's values ({Section.key: value}) applied and validated.

    The checkpoint kept as best is chosen by the sweep's metric, as the search judges the run by it.
    """
    fixed = {"Callbacks.monitor": spec.metric, "Callbacks.mode": "max" if spec.goal == "maximize" else "min"}
    placed = {"Training.output_dir": str(sweep_dir(cfg, sweep_id) / "runs"), "Training.run_name": run_name}
    return apply_overrides(cfg, {**fixed, **values, **placed}, origin=f"sweep {sweep_id} {run_name}:")


def parse_agent_args(args: list[str], where: str) -> dict[str, Any]:
    """{name: value} from W&B's `${args}` (`--name=value`; nested parameters arrive as a dict literal)."""
    values = {}
    for arg in args:
        name, sep, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep:
            raise ConfigError(f"{where}: unexpected argument {arg!r}; W&B's agent passes --name=value")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text  # a bare word such as adam
    return values


class SweepWandbLogger(WandbLogger):
    """WandbLogger that also logs each epoch's sweep metric under the name the sweep file uses, which
    is what W&B's server reads for bayes, hyperband and metric.target."""

    def __init__(self, run, metric: str) -> None:
        super().__init__(run)
        self.metric = metric

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        super().log_epoch(epoch, metrics)
        self.run.log({"epoch": epoch, self.metric: metrics[self.metric]})


def train_run(cfg: Config, spec: SweepSpec, provenance: str, wandb_run=None,
              on_value: Callable[[int, float], None] | None = None, data: DataBundle | None = None,
              run_dir: Path | None = None) -> tuple[TrainResult, float]:
    """Train one run; returns its result and its best value of the sweep metric.

    `on_value(epoch, value)` sees the metric after each epoch and may raise to stop the run
    (optuna.TrialPruned). A W&B run, when given, gets every epoch, the resolved config and the
    best checkpoint, and is marked failed if training raises.
    """
    logger = SweepWandbLogger(wandb_run, spec.metric) if wandb_run is not None else None
    values: list[float] = []

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        if logger is not None:
            logger.log_epoch(epoch, metrics)
        value = float(metrics[spec.metric])
        values.append(value)
        if on_value is not None:
            on_value(epoch, value)

    if logger is not None:
        wandb_run.config.update({"resolved": wandb_config(cfg)}, allow_val_change=True)
    # The run's W&B run is this one; the trainer must not open a second.
    quiet = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, wandb_project=""))
    failed = True
    try:
        result = train_model(quiet, data, on_epoch_end=on_epoch_end, provenance=provenance, run_dir=run_dir)
        failed = False
    finally:
        if logger is not None:
            if not failed and result.run_dir is not None:
                logger.log_best_checkpoint(result.run_dir / BEST, result.best_epoch, result.best_metrics)
            logger.close(failed=failed)
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        raise TrainingDiverged(f"training diverged: {spec.metric} was never finite")
    return result, max(finite) if spec.goal == "maximize" else min(finite)


def train_trial(cfg: Config, sweep_id: str, number: int, data: SharedDatasets) -> None:
    """A local run: train the values stored on trial `number`, report each epoch to the trial (where
    hyperband judges it), and record how the run ended."""
    study, spec, store = open_sweep(cfg, sweep_id)  # its own connection: never one shared with the agent
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(sweep_id), number)
    trial = optuna.Trial(study, trial_id)
    values = store.get_trial(trial_id).user_attrs[VALUES_ATTR]
    name = f"run{number}"
    try:
        run_cfg = run_config(cfg, spec, sweep_id, values, name)
        run_dir = create_run_dir(run_cfg.training.output_dir, run_cfg.model.model_arch, name)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))

        def on_value(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if epoch < run_cfg.training.n_epochs and trial.should_prune():
                raise optuna.TrialPruned()

        wandb_run = init_wandb_run(run_cfg, f"{sweep_id}-{name}", sweep_id,
                                   {**wandb_config(run_cfg), "sweep": sweep_id, "run": number},
                                   sweep_dir(cfg, sweep_id) / "wandb")
        provenance = f"Sweep {sweep_id}, {name}: " + ", ".join(f"{k} = {v}" for k, v in values.items())
        _, best = train_run(run_cfg, spec, provenance, wandb_run, on_value, data.get(run_cfg), run_dir)
    except optuna.TrialPruned:
        study.tell(number, state=TrialState.PRUNED)
    except (TrainingDiverged, ConfigError) as exc:  # ConfigError: values valid alone, not together
        _fail(study, trial, number, str(exc))
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        _fail(study, trial, number, f"out of memory: {first_line(exc)}")
    else:
        study.tell(number, best)


def _fail(study: optuna.Study, trial: optuna.Trial, number: int, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason)
    study.tell(number, state=TrialState.FAIL)
