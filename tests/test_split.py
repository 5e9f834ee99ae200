"""The train/val/test split: reproducible, grouped by patient, stratified on the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.data.split import assign_splits, stratum
from src.data.zones import ZONES, csi_from_scores


def make_table(n: int, seed: int = 0, patients: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = rng.choice(4, size=(n, 6), p=[0.45, 0.3, 0.17, 0.08])
    scores[rng.random((n, 6)) < 0.1] = 4
    table = pd.DataFrame(scores, columns=list(ZONES))
    table.insert(0, "FileID", [str(10000 + i) for i in range(n)])
    table["csi"] = csi_from_scores(scores)
    if patients:
        table["PatientID"] = [f"P{i}" for i in rng.integers(0, n // 3, n)]
    return table


def test_reproducible_for_a_seed_and_changes_with_it():
    table = make_table(300)
    first = assign_splits(table, (0.7, 0.15, 0.15), seed=3)
    assert first.equals(assign_splits(table, (0.7, 0.15, 0.15), seed=3))
    assert not first.equals(assign_splits(table, (0.7, 0.15, 0.15), seed=4))


def test_no_patient_in_two_splits_and_fractions_respected():
    table = make_table(600)
    split = assign_splits(table, (0.7, 0.15, 0.15), seed=0)
    assert (table.assign(split=split).groupby("PatientID")["split"].nunique() == 1).all()
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["val"] - 0.15) < 0.03


def test_stratified_on_labels():
    table = make_table(1000, patients=False)
    split = assign_splits(table, (0.6, 0.2, 0.2), seed=1)
    strata = pd.Series(stratum(table["csi"]))
    overall = strata.value_counts(normalize=True)
    for name in ("train", "val", "test"):
        within = strata[split == name].value_counts(normalize=True)
        for s, share in overall.items():
            # Proportional dealing keeps every stratum within one image of its exact share.
            assert abs(within.get(s, 0) - share) * (split == name).sum() <= 1.01


def test_explicit_split_column_wins():
    table = make_table(30)
    table["split"] = ["test"] * 30
    assert (assign_splits(table, (0.7, 0.15, 0.15), seed=0) == "test").all()


def test_zero_test_fraction():
    split = assign_splits(make_table(100), (0.8, 0.2, 0.0), seed=0)
    assert set(split) == {"train", "val"}
