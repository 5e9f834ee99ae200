"""cv mode: k-fold cross-validation grouped by patient; prints per-fold metrics and their mean ± std."""

from __future__ import annotations

from typing import Any

import click
import pandas as pd

from src.config.schema import Config
from src.experiments.crossval import CVResult, run_cross_validation

SHOWN = ("f1_macro", "accuracy", "qwk", "csi_mae", "csi_pearson", "ahf_accuracy", "unknown_pred_rate")
_SPLIT_TITLES = {"val": "held-out fold (each model on the images it did not train on)",
                 "test": "test split (each fold's model on the same test images)"}


def summary_table(result: CVResult, split: str) -> pd.DataFrame:
    """Rows: each fold, then mean ± std (and for the held-out folds the pooled out-of-fold predictions)."""
    rows = {f"fold_{k}": {n: f"{m[split].get(n, float('nan')):.4f}" for n in SHOWN} for k, m in result.folds.items()}
    rows["mean ± std"] = {n: f"{result.mean[split][n]:.4f} ± {result.std[split][n]:.4f}" for n in SHOWN}
    if split == "val":
        rows["out-of-fold (pooled)"] = {n: f"{result.oof[n]:.4f}" for n in SHOWN}
    return pd.DataFrame(rows).T


def run_cv(cfg: Config, options: dict[str, Any]) -> CVResult:
    result = run_cross_validation(cfg)
    click.echo(f"Cross-validation {result.cv_dir} ({len(result.folds)} folds)")
    for split in result.mean:
        click.echo(f"\n{_SPLIT_TITLES[split]}")
        click.echo(summary_table(result, split).to_string())
    click.echo(f"\nSummary          {result.cv_dir / 'cv_summary.json'}")
    click.echo(f"Out-of-fold      {result.cv_dir / 'oof_predictions.csv'}")
    click.echo(f"Ensemble eval    python main.py --mode eval --run {result.cv_dir}")
    return result
