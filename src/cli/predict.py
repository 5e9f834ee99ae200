"""predict mode: score new images with a trained checkpoint, an ensemble of several, or an exported ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pandas as pd

from src.config.schema import Config
from src.utils.errors import CSIError


def _ahf_counts(table: pd.DataFrame) -> pd.Series:
    return table["ahf_pred"].replace("", "undefined").value_counts()


def _report_ensemble(table: pd.DataFrame, members: dict[str, pd.DataFrame], name: str) -> None:
    """Each member's AHF classes and mean CSI beside the ensemble's (row `name`), and how often it agrees."""
    tables = {**members, name: table}
    overview = pd.DataFrame({name: _ahf_counts(t) for name, t in tables.items()}).T.fillna(0).astype(int)
    overview = overview.rename_axis(columns=None)
    overview["mean csi_pred"] = [round(float(t["csi_pred"].mean()), 4) for t in tables.values()]
    overview["AHF as ensemble"] = [f"{(t['ahf_pred'] == table['ahf_pred']).mean():.1%}" for t in tables.values()]
    click.echo(overview.to_string())


def run_predict(cfg: Config, options: dict[str, Any]) -> None:
    if not options.get("input"):
        raise CSIError("predict needs --input DIR|CSV (a folder of images or a CSV of FileIDs)")
    output = options.get("output") or "predictions.csv"
    if Path(output).is_dir():
        raise CSIError(f"{output}: --output of predict is a CSV file to write, and this is a folder")
    if options.get("runtime") == "onnx":
        # Imported here: this path must run where PyTorch is not installed.
        from src.deploy.onnx_predict import predict_with_onnx

        if not options.get("checkpoint"):
            raise CSIError("predict --runtime onnx needs --checkpoint MODEL.onnx (made with --mode export)")
        members, table = [options["checkpoint"]], predict_with_onnx(cfg, options["checkpoint"], options["input"],
                                                                     output)
    else:
        from src.evaluation.ensemble import ENSEMBLE, ensemble_average, ensemble_checkpoints
        from src.evaluation.predict import predict_ensemble

        members = ensemble_checkpoints(cfg, options.get("runs", ()), options.get("checkpoints", ()))
        result = predict_ensemble(cfg, members, options["input"], output)
        table = result.table
        if len(members) > 1:
            click.echo(f"Scored {len(table)} image(s) with {len(members)} checkpoints "
                       f"({ensemble_average(cfg)} ensemble) -> {output}")
            _report_ensemble(table, result.members, ENSEMBLE)
            return
    click.echo(f"Scored {len(table)} image(s) with {members[0]} -> {output}")
    click.echo("AHF classes: " + ", ".join(f"{k} {v}" for k, v in _ahf_counts(table).items()))
