"""Train/val/test split: seeded, stratified on the zone labels, grouped by patient."""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.data.labels import SPLITS


def stratum(csi: pd.Series) -> np.ndarray:
    """Stratification label per image: the CSI rounded to 0-3, or 4 when no zone is known."""
    values = csi.to_numpy(dtype=float)
    return np.where(np.isnan(values), 4, np.round(np.nan_to_num(values))).astype(int)


def assign_splits(table: pd.DataFrame, fractions: tuple[float, float, float], seed: int) -> pd.Series:
    """'train'/'val'/'test' per row.

    An explicit `split` column wins. Otherwise whole patients (PatientID, else each image alone)
    are dealt out in an order sorted by stratum and shuffled within it; each goes to the split
    furthest below its share of images so far, so every stratum and the totals follow `fractions`.
    """
    if "split" in table:
        return table["split"].rename("split")
    groups = table["PatientID"] if "PatientID" in table else table["FileID"]
    groups = groups.where(groups.astype(str) != "", table["FileID"])
    per_group = pd.DataFrame({"group": groups.to_numpy(), "stratum": stratum(table["csi"])})
    summary = per_group.groupby("group", sort=True).agg(
        stratum=("stratum", lambda s: int(np.median(s))), size=("stratum", "size")
    )
    rng = np.random.default_rng(seed)
    summary["order"] = rng.permutation(len(summary))
    summary = summary.sort_values(["stratum", "order"])

    target = np.asarray(fractions, dtype=float)
    assigned = np.zeros(len(SPLITS))
    choice = {}
    for group, size in zip(summary.index, summary["size"]):
        deficit = target * (assigned.sum() + size) - assigned
        best = int(np.argmax(np.where(target > 0, deficit, -np.inf)))
        choice[group] = SPLITS[best]
        assigned[best] += size
    return pd.Series([choice[g] for g in groups], index=table.index, name="split")
