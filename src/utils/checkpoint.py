"""Checkpoints: plain dicts of state dicts, numbers and the config text, written atomically and
read with torch.load(weights_only=True), so loading one never runs code."""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.utils.errors import CheckpointError, first_line
from src.utils.io import atomic_write_with

CHECKPOINT_FORMAT = 2  # 2: the run's state in "run_state", no second copy of the weights


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
        raise CheckpointError(f"{path}: not a readable CSI-Predictor checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or not {"model", "arch", "config"} <= set(state):
        raise CheckpointError(f"{path}: not a CSI-Predictor checkpoint (no model/arch/config entries)")
    return state


def load_weights(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load the weights of a checkpoint already read (from `path`) into `model`; refuse another architecture."""
    arch = getattr(model, "arch_name", None)
    if arch is not None and state["arch"] != arch:
        raise CheckpointError(
            f"{path}: checkpoint is a {state['arch']} model, not {arch}; set [Model] model_arch = "
            f"{state['arch']} or pick another checkpoint"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit this model ({first_line(exc)})") from None


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into `model`; refuse one of another architecture.

    Returns the whole checkpoint dict (epoch, metrics, config text, ...).
    """
    state = read_checkpoint(path)
    load_weights(model, state, path)
    return state


class TopKCheckpoints:
    """Keeps checkpoint_epoch_<N>.pth of the `k` best epochs by the monitored value, deleting the rest."""

    def __init__(self, run_dir: Path | None, k: int, mode: str) -> None:
        self.run_dir, self.k, self.mode = run_dir, k, mode
        self.kept: list[list] = []  # [value, epoch], best first

    def offer(self, value: float, epoch: int) -> Path | None:
        """Rank this epoch, delete the files that drop out; the path to write its checkpoint to, or None."""
        if self.k == 0 or math.isnan(value):
            return None
        self.kept.append([value, epoch])
        self.kept.sort(key=lambda item: item[0], reverse=self.mode == "max")
        for _, dropped in self.kept[self.k:]:
            self.path(dropped).unlink(missing_ok=True)
        self.kept = self.kept[:self.k]
        return self.path(epoch) if [value, epoch] in self.kept else None

    def path(self, epoch: int) -> Path:
        return self.run_dir / f"checkpoint_epoch_{epoch}.pth"

    def state_dict(self) -> dict:
        return {"kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.kept = [list(item) for item in state["kept"]]
