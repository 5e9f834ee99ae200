"""Train/val/test split and cross-validation folds: seeded, stratified on the zone labels, grouped by patient."""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.data.labels import SPLITS
from src.utils.errors import ConfigError


def stratum(csi: pd.Series) -> np.ndarray:
    """Stratification label per image: the CSI rounded to 0-3, or 4 when no zone is known."""
    values = csi.to_numpy(dtype=float)
    return np.where(np.isnan(values), 4, np.round(np.nan_to_num(values))).astype(int)


def patient_groups(table: pd.DataFrame) -> pd.Series:
    """The group of each row that a split never divides: its PatientID, else the image alone."""
    groups = table["PatientID"] if "PatientID" in table else table["FileID"]
    return groups.where(groups.astype(str) != "", table["FileID"])


def deal_groups(table: pd.DataFrame, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Index into `fractions` per row: whole patients dealt out to parts of these shares.

    Patients are taken in an order sorted by stratum (median of their images) and shuffled within
    it; each goes to the part furthest below its share of images so far, so every stratum and the
    totals follow `fractions`, and no patient is in two parts.
    """
    codes, _ = pd.factorize(patient_groups(table), sort=True)
    sizes = np.bincount(codes, minlength=codes.max(initial=-1) + 1)
    strata = pd.Series(stratum(table["csi"])).groupby(codes).median().to_numpy().astype(int)
    order = np.random.default_rng(seed).permutation(len(sizes))
    target = [float(f) for f in fractions]
    open_parts = [p for p, share in enumerate(target) if share > 0]
    assigned, total = [0.0] * len(target), 0.0
    choice = np.empty(len(sizes), dtype=int)
    # One patient at a time, each choice depending on those before: plain floats, not numpy, per step.
    for group in np.lexsort((order, strata)).tolist():
        size = int(sizes[group])
        total += size
        best = max(open_parts, key=lambda p: target[p] * total - assigned[p])
        choice[group] = best
        assigned[best] += size
    return choice[codes]


def assign_splits(table: pd.DataFrame, fractions: tuple[float, float, float], seed: int) -> pd.Series:
    """'train'/'val'/'test' per row: an explicit `split` column wins, else `deal_groups`.

    A column may leave rows empty (BrixIA names only its test set): a patient with a named row
    follows it, and the other patients are dealt over the splits the column never names, by their
    fractions (over all three when it names every split)."""
    if "split" not in table:
        parts = deal_groups(table, fractions, seed)
        return pd.Series(np.asarray(SPLITS, dtype=object)[parts], index=table.index, name="split")
    split = table["split"].astype(object).rename("split")
    groups = patient_groups(table)
    named = split != ""
    if named.all():
        return split
    follows = groups.map(split[named].groupby(groups[named]).first())
    split = split.where(named, follows.fillna(""))
    open_rows = split == ""
    if open_rows.any():
        free = [name for name in SPLITS if name not in set(split[~open_rows])] or list(SPLITS)
        shares = tuple(fractions[SPLITS.index(name)] for name in free)
        parts = deal_groups(table[open_rows], shares if sum(shares) > 0 else (1.0,) * len(free), seed)
        split[open_rows] = np.asarray(free, dtype=object)[parts]
    return split


def assign_folds(table: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Cross-validation fold 1..n_folds of each row of `table` (patient-grouped, stratified, equal shares)."""
    parts = deal_groups(table, (1 / n_folds,) * n_folds, seed)
    return pd.Series(parts + 1, index=table.index, name="fold")


def plan_folds(table: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Cross-validation fold 1..n_folds of each row of `table` outside its test split; 0 for test rows."""
    pool = (table["split"] != "test").to_numpy()
    patients = patient_groups(table)[pool].nunique()
    if patients < n_folds:
        raise ConfigError(f"{n_folds} cross-validation folds: only {patients} patients outside the test split; "
                          "use fewer folds")
    folds = np.zeros(len(table), dtype=int)
    folds[pool] = assign_folds(table[pool], n_folds, seed).to_numpy()
    return folds


def fold_splits(folds: np.ndarray, k: int) -> np.ndarray:
    """Split per row for fold k's run: fold k validates, the other folds train, the test split stays."""
    return np.where(folds == 0, "test", np.where(folds == k, "val", "train")).astype(object)
