"""predict mode: score new images with a trained checkpoint, or an exported ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from src.config.schema import Config
from src.utils.errors import CSIError


def _score(cfg: Config, options: dict[str, Any], output: str):
    if options.get("runtime") == "onnx":
        # Imported here: this path must run where PyTorch is not installed.
        from src.deploy.onnx_predict import predict_with_onnx

        if not options.get("checkpoint"):
            raise CSIError("predict --runtime onnx needs --checkpoint MODEL.onnx (made with --mode export)")
        return options["checkpoint"], predict_with_onnx(cfg, options["checkpoint"], options["input"], output)
    from src.evaluation.evaluate import resolve_checkpoint
    from src.evaluation.predict import predict_images

    checkpoint = resolve_checkpoint(cfg, options.get("run"), options.get("checkpoint"))
    return checkpoint, predict_images(cfg, checkpoint, options["input"], output)


def run_predict(cfg: Config, options: dict[str, Any]) -> None:
    if not options.get("input"):
        raise CSIError("predict needs --input DIR|CSV (a folder of images or a CSV of FileIDs)")
    output = options.get("output") or "predictions.csv"
    if Path(output).is_dir():
        raise CSIError(f"{output}: --output of predict is a CSV file to write, and this is a folder")
    checkpoint, table = _score(cfg, options, output)
    counts = table["ahf_pred"].value_counts().to_dict()
    click.echo(f"Scored {len(table)} image(s) with {checkpoint} -> {output}")
    click.echo("AHF classes: " + ", ".join(f"{k or 'undefined'} {v}" for k, v in counts.items()))
