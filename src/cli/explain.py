"""explain mode: per-zone Grad-CAM overlays of any images with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from src.config.schema import Config
from src.evaluation.evaluate import resolve_checkpoint
from src.evaluation.explain import explain_images
from src.utils.errors import CSIError


def run_explain(cfg: Config, options: dict[str, Any]) -> None:
    if not options.get("input") or not options.get("output"):
        raise CSIError("explain needs --input DIR|CSV (images to explain) and --output DIR (folder to write)")
    if Path(options["output"]).is_file():
        raise CSIError(f"{options['output']}: --output of explain is a folder, and this is a file")
    checkpoint = resolve_checkpoint(cfg, options.get("run"), options.get("checkpoint"))
    table = explain_images(cfg, checkpoint, options["input"], options["output"])
    click.echo(f"Explained {len(table)} image(s) with {checkpoint} -> {Path(options['output']) / 'index.html'}")
