"""eval and both modes: evaluate a trained run and print a compact table."""

from __future__ import annotations

from typing import Any

import click

from src.cli.train import run_train
from src.config.schema import Config
from src.evaluation.evaluate import evaluate_model, metrics_table

SHOWN = ("f1_macro", "f1_weighted", "accuracy", "qwk", "precision_macro", "recall_macro", "csi_mae",
         "csi_rmse", "csi_pearson", "ahf_accuracy", "ahf_f1_macro", "unknown_pred_rate", "unknown_recall")


def run_eval(cfg: Config, options: dict[str, Any]) -> dict:
    results = evaluate_model(cfg, run=options.get("run"), checkpoint=options.get("checkpoint"))
    click.echo(metrics_table(results, SHOWN).to_string())
    return results


def run_both(cfg: Config, options: dict[str, Any]) -> dict:
    result = run_train(cfg, options)
    return run_eval(cfg, {**options, "run": str(result.run_dir), "checkpoint": None})
