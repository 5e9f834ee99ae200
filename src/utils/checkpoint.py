"""Checkpoints: plain dicts of state dicts, numbers and the config text, written atomically and
read with torch.load(weights_only=True), so loading one never runs code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.config.loader import apply_overrides, config_from_text, get_value
from src.config.schema import Config
from src.utils.errors import CheckpointError
from src.utils.io import atomic_write_with

CHECKPOINT_FORMAT = 1
# Keys of the current config that apply when re-using a trained model: where and how to compute,
# not what the model is or how its inputs were prepared (those come from the checkpoint).
RUNTIME_KEYS = ("Training.device", "Training.precision", "Training.channels_last", "Training.num_workers",
                "Training.compile", "Data.cache_dir", "Data.on_missing", "Evaluation.ahf_low_threshold",
                "Evaluation.ahf_high_threshold", "Evaluation.batch_size", "Evaluation.bootstrap_samples",
                "Evaluation.bootstrap_seed", "Evaluation.calibrate", "Evaluation.tta", "Evaluation.ensemble_average",
                "Logging.log_dir")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (must include 'model', 'arch' and 'config') to `path` atomically."""
    atomic_write_with(path, lambda handle: torch.save({"format": CHECKPOINT_FORMAT, **state}, handle))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # torch.load does not check the archive's CRCs: flipped bytes inside a tensor would load.
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged:
                raise zipfile.BadZipFile(f"entry {damaged} fails its CRC check")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a readable CSI-Predictor checkpoint ({reason})") from None
    if not isinstance(state, dict) or not {"model", "arch", "config"} <= set(state):
        raise CheckpointError(f"{path}: not a CSI-Predictor checkpoint (no model/arch/config entries)")
    return state


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into `model`; refuse one of another architecture.

    Returns the whole checkpoint dict (epoch, metrics, config text, ...).
    """
    state = read_checkpoint(path)
    arch = getattr(model, "arch_name", None)
    if arch is not None and state["arch"] != arch:
        raise CheckpointError(
            f"{path}: checkpoint is a {state['arch']} model, not {arch}; set [Model] model_arch = "
            f"{state['arch']} or pick another checkpoint"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit this model ({str(exc).splitlines()[0]})") from None
    return state


def checkpoint_config(state: dict[str, Any], current: Config, path: str | Path) -> Config:
    """The config a checkpoint was trained with, with `current`'s runtime keys (device, ...)."""
    trained = config_from_text(state["config"], f"{path} (embedded config)")
    return apply_overrides(trained, {key: get_value(current, key) for key in RUNTIME_KEYS}, f"{path}")
