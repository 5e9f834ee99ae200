"""One sweep run, in its own process: parameter values -> the INI config -> train_model.

Both backends start this (`--mode sweep-run`). W&B's agent passes the values on the command
line (`--name=value`, its `${args}`) and in `wandb.config`; the local agent stores them on the
run's Optuna trial. Either way they are applied onto config.ini with the usual validation, and
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

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.sweeps.spec import SweepSpec
from src.training.loggers import WandbLogger, wandb_config
from src.training.trainer import TrainResult, train_model
from src.utils.errors import ConfigError
from src.utils.run_dir import BEST


def sweep_dir(cfg: Config, sweep_id: str) -> Path:
    """models/sweeps/<sweep>: runs.csv, best_params.json, plots, and each run's directory under runs/."""
    return Path(cfg.training.output_dir) / "sweeps" / sweep_id


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
              on_value: Callable[[int, float], None] | None = None) -> tuple[TrainResult, float]:
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
        result = train_model(quiet, on_epoch_end=on_epoch_end, provenance=provenance)
        failed = False
    finally:
        if logger is not None:
            if not failed and result.run_dir is not None:
                logger.log_best_checkpoint(result.run_dir / BEST, result.best_epoch, result.best_metrics)
            logger.close(failed=failed)
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        raise ConfigError(f"sweep metric {spec.metric} was never finite: the run diverged")
    return result, max(finite) if spec.goal == "maximize" else min(finite)
