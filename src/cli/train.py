"""train mode: train per the config and report where the run is and its best metrics.

Also runnable as `python -m src.cli.train` (legacy entry point), with the same options.
"""

from __future__ import annotations

from typing import Any

import click

from src.config.schema import Config
from src.config.trained import checkpoint_config
from src.training.trainer import DebugRun, TrainResult, resume_point, train_model

REPORTED = ("val_loss", "val_f1_macro", "val_f1_weighted", "val_accuracy", "val_qwk", "val_csi_mae",
            "val_csi_pearson", "val_ahf_accuracy", "val_unknown_pred_rate")


def report(result: TrainResult) -> None:
    if not result.is_main:
        return
    click.echo(f"Run directory  {result.run_dir or '(none: fast dev run)'}")
    click.echo(f"Best epoch     {result.best_epoch}")
    for name in REPORTED:
        if name in result.best_metrics:
            click.echo(f"  {name:<22} {result.best_metrics[name]:.4f}")


def run_train(cfg: Config, options: dict[str, Any]) -> TrainResult:
    debug = DebugRun(fast_dev_run=bool(options.get("fast_dev_run")),
                     overfit_batches=options.get("overfit_batches") or 0)
    resume = options.get("resume")
    if resume:
        # A resumed run keeps the settings it started with; only where/how to compute may change.
        resume = resume_point(resume)  # read once: its config here, its state in train_model
        cfg = checkpoint_config(resume.state, cfg, resume.path)
    result = train_model(cfg, resume=resume, debug=debug)
    report(result)
    return result


if __name__ == "__main__":
    from src.cli.main import main

    main(default_mode="train")
