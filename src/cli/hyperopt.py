"""hyperopt mode: search the [Hyperopt] space with Optuna; train-optimized: train with the best values found.

Thin shells over src/optimization/runner.py, which notebooks and the sweep backend call too.
"""

from __future__ import annotations

from typing import Any

import click
import optuna

from src.cli.train import report
from src.config.schema import Config
from src.optimization.report import summary
from src.optimization.runner import run_study, train_best
from src.optimization.study import display_location
from src.training.trainer import TrainResult
from src.utils.errors import CSIError


def run_hyperopt(cfg: Config, options: dict[str, Any]) -> optuna.Study:
    outcome = run_study(cfg)
    click.echo(summary(outcome.study, cfg))
    if outcome.interrupted:
        raise SystemExit(130)  # the shell's code for Ctrl-C: a script does not go on as if it had finished
    if outcome.best_params is None:
        raise CSIError(f"Study {cfg.hyperopt.study_name}: no trial completed; "
                       f"see {outcome.report_dir / 'trials.csv'} for why")
    click.echo(f"Results        {outcome.report_dir}")
    click.echo(f"Dashboard      optuna-dashboard {display_location(cfg)}")
    return outcome.study


def run_train_optimized(cfg: Config, options: dict[str, Any]) -> TrainResult:
    """Train for [Training] n_epochs with a study's best values (--hyperparams file or the store)."""
    result = train_best(cfg, options.get("hyperparams"))
    report(result)
    return result
