"""The per-image predictions table shared by eval and predict."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.zones import CLASS_NAMES, ZONES, csi_from_scores
from src.engine.metrics import AHF_CLASSES, ahf_class, predicted_csi


def _ahf_names(csi: np.ndarray, low: float, high: float) -> list[str]:
    defined = ~np.isnan(csi)
    classes = np.full(len(csi), "", dtype=object)
    classes[defined] = np.asarray(AHF_CLASSES, dtype=object)[ahf_class(csi[defined], low, high)]
    return classes.tolist()


def predictions_table(file_ids: Sequence[str], probs: np.ndarray, targets: np.ndarray | None,
                      ahf_low: float, ahf_high: float) -> pd.DataFrame:
    """FileID; per zone [<zone>_true,] <zone>_pred, <zone>_p0..p4; [csi_true,] csi_pred; [ahf_true,] ahf_pred."""
    pred = probs.argmax(-1)
    columns: dict[str, object] = {"FileID": list(file_ids)}
    for z, zone in enumerate(ZONES):
        if targets is not None:
            columns[f"{zone}_true"] = targets[:, z]
        columns[f"{zone}_pred"] = pred[:, z]
        for c in range(probs.shape[-1]):
            columns[f"{zone}_p{c}"] = np.round(probs[:, z, c], 5)
    csi_pred = predicted_csi(pred, probs)
    if targets is not None:
        csi_true = csi_from_scores(targets)
        columns["csi_true"] = np.round(csi_true, 4)
    columns["csi_pred"] = np.round(csi_pred, 4)
    if targets is not None:
        columns["ahf_true"] = _ahf_names(csi_true, ahf_low, ahf_high)
    columns["ahf_pred"] = _ahf_names(csi_pred, ahf_low, ahf_high)
    return pd.DataFrame(columns)


def predictions_arrays(table: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """FileIDs, targets [N, 6], predicted classes [N, 6] and probabilities [N, 6, 5] of a table made by
    `predictions_table` with targets."""
    targets = table[[f"{zone}_true" for zone in ZONES]].to_numpy(dtype=np.int64)
    y_pred = table[[f"{zone}_pred" for zone in ZONES]].to_numpy(dtype=np.int64)
    probs = np.stack([table[[f"{zone}_p{c}" for c in range(len(CLASS_NAMES))]].to_numpy(dtype=float)
                      for zone in ZONES], axis=1)
    return table["FileID"].astype(str).tolist(), targets, y_pred, probs


def read_predictions_table(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """`predictions_arrays` of a CSV written from `predictions_table` (eval's predictions_<split>.csv)."""
    return predictions_arrays(pd.read_csv(path, dtype={"FileID": str}, keep_default_na=False))
