"""export mode: a trained checkpoint as an ONNX or TorchScript file that carries its preprocessing."""

from __future__ import annotations

from typing import Any

import click

from src.config.schema import Config
from src.deploy.export import export_model
from src.evaluation.evaluate import resolve_checkpoint


def run_export(cfg: Config, options: dict[str, Any]) -> None:
    checkpoint = resolve_checkpoint(cfg, options.get("run"), options.get("checkpoint"))
    output = export_model(cfg, checkpoint, options.get("format") or "onnx", options.get("output"))
    click.echo(f"Exported {checkpoint} -> {output} (outputs checked against PyTorch)")
