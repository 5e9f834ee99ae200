"""predict mode: score new images with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from src.config.schema import Config
from src.evaluation.evaluate import resolve_checkpoint
from src.evaluation.predict import predict_images
from src.utils.errors import CSIError


def run_predict(cfg: Config, options: dict[str, Any]) -> None:
    if not options.get("input"):
        raise CSIError("predict needs --input DIR|CSV (a folder of images or a CSV of FileIDs)")
    checkpoint = resolve_checkpoint(cfg, options.get("run"), options.get("checkpoint"))
    output = options.get("output") or "predictions.csv"
    if Path(output).is_dir():
        raise CSIError(f"{output}: --output of predict is a CSV file to write, and this is a folder")
    table = predict_images(cfg, checkpoint, options["input"], output)
    counts = table["ahf_pred"].value_counts().to_dict()
    click.echo(f"Scored {len(table)} image(s) with {checkpoint} -> {output}")
    click.echo("AHF classes: " + ", ".join(f"{k or 'undefined'} {v}" for k, v in counts.items()))
