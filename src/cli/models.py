"""models mode: every backbone with its parameters, sizes and weights; --measure times training."""

from __future__ import annotations

import os
from typing import Any

import click
import pandas as pd

from src.config.loader import apply_overrides
from src.config.schema import Config
from src.engine.precision import candidates, probe_batch, time_model_steps
from src.models.zoo.catalog import describe, listed
from src.utils.device import resolve_device

MEASURE_BATCH = 2  # images per timed step: the large backbones at their native size stay quick on a CPU


def measure(cfg: Config, name: str, size: int) -> dict[str, float]:
    """Training images/s of `name` at `size` px per arithmetic the device runs natively (random weights)."""
    device = resolve_device(cfg.training.device)
    trial = apply_overrides(cfg, {"Model.model_arch": name, "Data.image_size": size,
                                  "Training.batch_size": MEASURE_BATCH})
    options = [o for o in candidates(device, "auto") if o.name == "fp32" or o.channels_last]
    batch = probe_batch(trial, device)
    return {str(o): batch / seconds for o, seconds in time_model_steps(trial, device, options).items()}


def _weights_column(sources: list[tuple[str, str, bool]]) -> str:
    """'hub microsoft/rad-dino (cached)', or for several: their shared prefix, each rest, how many cached."""
    if len(sources) == 1:
        what, _, there = sources[0]
        return f"{what} ({'cached' if there else 'not cached'})"
    if not sources:
        return "none (pretrained_path only)"
    names = [what for what, _, _ in sources]
    prefix = os.path.commonprefix(names)
    cached = sum(there for _, _, there in sources)
    return f"{prefix}{{{','.join(n[len(prefix):] for n in names)}}} ({cached} of {len(sources)} cached)"


def run_models(cfg: Config, options: dict[str, Any]) -> None:
    rows = []
    for name in listed(cfg.model.model_arch):
        info = describe(name)
        weights = _weights_column(info.sources)
        row = {"backbone": name, "params (M)": f"{info.params / 1e6:.1f}", "channels": info.channels,
               "native px": info.native_size, "sizes": info.sizes, "pretrained weights": weights}
        if options.get("measure"):
            row |= {f"img/s {k}": f"{v:.1f}" for k, v in measure(cfg, name, info.native_size).items()}
        rows.append(row)
    click.echo(pd.DataFrame(rows).to_string(index=False))
    click.echo("\nAny backbone also takes [Model] pretrained_path (a state dict; a snapshot directory for raddino "
               "and hf:). Caches: TORCH_HOME (torchvision), HF_HOME (raddino, timm:, hf:), ~/.torchxrayvision "
               "(chexnet).")
    if options.get("measure"):
        click.echo(f"img/s: training steps (forward, backward, update) of {MEASURE_BATCH} images at the native "
                   "size on this machine, random weights.")
