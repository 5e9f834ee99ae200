"""train mode: train per the config and report where the run is and its best metrics.

Also runnable as `python -m src.cli.train` (legacy entry point), with the same options.
"""

from __future__ import annotations

from typing import Any

import click

from src.config.schema import Config
from src.training.trainer import TrainResult, train_model

REPORTED = ("val_loss", "val_f1_macro", "val_f1_weighted", "val_accuracy", "val_qwk", "val_csi_mae",
            "val_csi_pearson", "val_ahf_accuracy", "val_unknown_pred_rate")


def report(result: TrainResult) -> None:
    click.echo(f"Run directory  {result.run_dir}")
    click.echo(f"Best epoch     {result.best_epoch}")
    for name in REPORTED:
        if name in result.best_metrics:
            click.echo(f"  {name:<22} {result.best_metrics[name]:.4f}")


def run_train(cfg: Config, options: dict[str, Any]) -> TrainResult:
    result = train_model(cfg)
    report(result)
    return result


if __name__ == "__main__":
    from src.cli.main import main

    main(default_mode="train")
