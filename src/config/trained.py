"""The config of a trained model: the one its checkpoint embeds, with the current run's runtime keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.config.loader import apply_overrides, config_from_text, get_value
from src.config.schema import Config

# Keys of the current config that apply when re-using a trained model: where and how to compute,
# not what the model is or how its inputs were prepared (those come from the checkpoint).
RUNTIME_KEYS = ("Training.device", "Training.precision", "Training.channels_last", "Training.num_workers",
                "Training.compile", "Data.cache_dir", "Data.on_missing", "Evaluation.ahf_low_threshold",
                "Evaluation.ahf_high_threshold", "Evaluation.batch_size", "Evaluation.bootstrap_samples",
                "Evaluation.bootstrap_seed", "Evaluation.calibrate", "Evaluation.tta", "Evaluation.ensemble_average",
                "Evaluation.outcome_column",
                "Logging.log_dir")


def checkpoint_config(state: dict[str, Any], current: Config, path: str | Path) -> Config:
    """The config a checkpoint was trained with, with `current`'s runtime keys (device, ...)."""
    trained = config_from_text(state["config"], f"{path} (embedded config)")
    return apply_overrides(trained, {key: get_value(current, key) for key in RUNTIME_KEYS}, f"{path}")
