"""Descriptive tables of a labelled dataset (used by check and in run reports)."""

from __future__ import annotations

import pandas as pd

from src.data.zones import CLASS_NAMES, UNKNOWN, ZONES


def label_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Counts per zone (rows, plus 'all') and class (columns), with the Unknown share in percent."""
    counts = pd.DataFrame(
        {name: [(table[z] == c).sum() for z in ZONES] for c, name in enumerate(CLASS_NAMES)},
        index=list(ZONES),
    )
    counts.loc["all"] = counts.sum()
    counts["unknown_%"] = (100 * counts[CLASS_NAMES[UNKNOWN]] / counts.sum(axis=1)).round(1)
    return counts


def split_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Images (and patients, when known) per split."""
    grouped = table.groupby("split")
    out = pd.DataFrame({"images": grouped.size()})
    if "PatientID" in table:
        out["patients"] = grouped["PatientID"].nunique()
    out["mean_csi"] = grouped["csi"].mean().round(2)
    return out
