"""predict --runtime onnx: score images with an exported model through onnxruntime, without PyTorch.

The same files -> cache -> predictions table path as the PyTorch predict, with the preprocessing
read from the model file instead of a checkpoint, so both write the same CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.config.schema import Config
from src.data.inputs import cache_inputs
from src.data.masks import one_hot_zones, scoring_zones
from src.data.preprocess import Normalization, from_storage
from src.deploy.metadata import INPUT_NAME, MASK_INPUT_NAME, METADATA_KEY, OUTPUT_NAME, data_config_for, parse_metadata
from src.evaluation.calibration import apply_temperature
from src.evaluation.predictions import predictions_table
from src.utils.errors import ExportError, first_line
from src.utils.io import atomic_write_csv


def open_onnx_model(path: str | Path):
    """An onnxruntime session over `path` and the metadata the model carries."""
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX model not found")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
        raise ExportError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    metadata = parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), str(path))
    return session, metadata


def calibration_temperature(metadata: dict, model_path: str | Path) -> float:
    """The temperature eval fitted on the run's validation split, as recorded when the model was exported."""
    if metadata.get("temperature") is None:
        raise ExportError(f"{model_path}: exported without a fitted temperature, so [Evaluation] calibrate = true "
                          "cannot apply; run --mode eval on its run, export it again, or set calibrate = false")
    return float(metadata["temperature"])


def predict_with_onnx(cfg: Config, model_path: str | Path, source: str | Path, output: str | Path) -> pd.DataFrame:
    """Score the images of `source` into `output` (CSV) with an exported ONNX model."""
    session, metadata = open_onnx_model(model_path)
    data = data_config_for(metadata, cfg.data)
    usable, cache, cache_rows = cache_inputs(cfg, data, source)
    zones = (scoring_zones(data, metadata["zone_split"], model_path, usable["FileID"].tolist(), cache, cache_rows)
             if metadata.get("mask_input") else None)
    normalization = Normalization(metadata["preprocessing"]["normalization_mean"],
                                  metadata["preprocessing"]["normalization_std"])
    batch_size = cfg.evaluation.batch_size
    probs = []
    for start in range(0, len(cache_rows), batch_size):
        rows = cache_rows[start:start + batch_size]
        feed = {INPUT_NAME: normalization(from_storage(np.asarray(cache.images[rows])))[:, None]}
        if zones is not None:
            feed[MASK_INPUT_NAME] = one_hot_zones(zones[rows])
        probs.append(session.run([OUTPUT_NAME], feed)[0])
    probs = np.concatenate(probs)
    if cfg.evaluation.calibrate:
        probs = apply_temperature(probs, calibration_temperature(metadata, model_path))
    table = predictions_table(usable["FileID"].tolist(), probs, None,
                              cfg.evaluation.ahf_low_threshold, cfg.evaluation.ahf_high_threshold)
    atomic_write_csv(Path(output), table)
    return table
