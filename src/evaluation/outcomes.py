"""Does the CSI mean anything clinically? Its discrimination of a binary outcome ([Evaluation]
outcome_column, e.g. adjudicated acute heart failure): AUROC, ROC curves and the operating points.

Invariants:
- The score is the image's CSI, the model's as eval reports it (`predicted_csi`) and each
  reader's (the mean of the zones they scored). An image counts where its outcome is known and its
  CSI defined.
- Every interval is the percentile bootstrap of src/evaluation/bootstrap.py, resampling whole
  patients where PatientID is known (a patient's images are not independent; DeLong's variance
  would assume they are). The AUROC of each replicate is the weighted AUROC below, which is
  scikit-learn's roc_auc_score with sample_weight for every replicate at once.
- An operating point calls an image positive when its CSI is above the threshold, as the AHF
  classes do (low: CSI <= ahf_low_threshold): at ahf_low and ahf_high, and at the model's Youden
  point (the threshold with the largest sensitivity + specificity - 1 on these images).
- Model against reader: the same resamples of the images both scored, so the difference keeps
  its pairing (`paired_difference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.evaluation.bootstrap import BootstrapSettings, paired_difference, percentile_interval, resample_weights

MODEL = "model"


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B] AUROC of `scores` [N] for the labels `positive` [N] under image weights [B, N]: the
    weighted share of (positive, negative) pairs ranked right, ties counting half. NaN for a
    replicate without a positive or a negative."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tie groups
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)  # [B, groups]
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each group
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def operating_point(scores: np.ndarray, positive: np.ndarray, threshold: float, weights: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """[B] sensitivity, specificity, PPV and NPV of calling CSI > `threshold` positive (NaN where undefined)."""
    called = np.asarray(scores) > threshold
    positive = np.asarray(positive, dtype=bool)
    counts = {name: np.atleast_2d(weights) @ (a & b).astype(float) for name, (a, b) in {
        "tp": (called, positive), "fp": (called, ~positive), "fn": (~called, positive), "tn": (~called, ~positive)
    }.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": counts["tp"] / (counts["tp"] + counts["fn"]),
                "specificity": counts["tn"] / (counts["tn"] + counts["fp"]),
                "ppv": counts["tp"] / (counts["tp"] + counts["fp"]),
                "npv": counts["tn"] / (counts["tn"] + counts["fn"])}


def youden_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold t (one of the scores) maximising sensitivity + specificity - 1 of CSI > t; the
    lowest such t on ties. NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    candidates = np.unique(scores)
    called = np.asarray(scores)[None, :] > candidates[:, None]
    youden = (called & positive).sum(axis=1) / positive.sum() + (~called & ~positive).sum(axis=1) / (~positive).sum()
    return float(candidates[np.argmax(youden)])


@dataclass
class OutcomeAnalysis:
    column: str
    images: int  # with a known outcome and a defined model CSI
    positives: int
    resampled: str  # "N patients" or "N images"
    auroc: pd.DataFrame  # scorer -> images, positives, auroc, ci_low, ci_high
    operating_points: pd.DataFrame  # scorer, rule, threshold, each measure and its CI
    comparisons: pd.DataFrame  # reader -> images, model, reader, difference (model - reader), ci, p
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # scorer -> (fpr, tpr)
    figures: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"column": self.column, "images": self.images, "positives": self.positives,
                "resampled": self.resampled, "auroc": self.auroc.reset_index().to_dict("records"),
                "operating_points": self.operating_points.to_dict("records"),
                "model_vs_readers": self.comparisons.reset_index().to_dict("records")}


def _auroc_row(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray, level: float) -> dict[str, float]:
    low, high = percentile_interval(weighted_auroc(scores, positive, weights), level)
    return {"images": float(len(scores)), "positives": float(positive.sum()),
            "auroc": float(weighted_auroc(scores, positive, np.ones(len(scores)))[0]), "ci_low": low, "ci_high": high}


def analyse_outcome(column: str, outcome: np.ndarray, model_csi: np.ndarray, reader_csi: dict[str, np.ndarray],
                    units: Sequence[str], unit_name: str, thresholds: dict[str, float],
                    bootstrap: BootstrapSettings) -> OutcomeAnalysis:
    """AUROC with 95% CIs of the model's and each reader's CSI for `outcome` (1/0/NaN per image), their
    operating points at `thresholds` (name -> CSI) and the model's Youden point, and the model's AUROC
    against each reader's on the images both scored (paired). `units`: each image's resampling unit
    (`resampling_units`), `unit_name` what they are (patients or images)."""
    from sklearn.metrics import roc_curve

    outcome, units = np.asarray(outcome, dtype=float), np.asarray(units)
    scorers = {name: np.asarray(csi, dtype=float) for name, csi in {MODEL: model_csi, **reader_csi}.items()}
    known = ~np.isnan(outcome)
    rows, points, roc = {}, [], {}
    usable = {}
    for name, csi in scorers.items():
        keep = known & ~np.isnan(csi)
        usable[name] = keep
        if keep.sum() == 0:
            continue
        scores, positive = csi[keep], outcome[keep] == 1
        weights = resample_weights(units[keep], bootstrap)
        rows[name] = _auroc_row(scores, positive, weights, bootstrap.level)
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, scores)
            roc[name] = (fpr, tpr)
        rules = dict(thresholds)
        if name == MODEL:
            rules["Youden point"] = youden_threshold(scores, positive)
        for rule, threshold in rules.items():
            if np.isnan(threshold):
                continue
            observed = operating_point(scores, positive, threshold, np.ones((1, len(scores))))
            replicates = operating_point(scores, positive, threshold, weights)
            row = {"scorer": name, "rule": rule, "threshold": threshold}
            for measure, value in observed.items():
                low, high = percentile_interval(replicates[measure], bootstrap.level)
                row |= {measure: float(value[0]), f"{measure}_ci_low": low, f"{measure}_ci_high": high}
            points.append(row)
    comparisons = {}
    for reader in reader_csi:
        both = usable[MODEL] & usable.get(reader, np.zeros_like(known))
        positive = outcome[both] == 1
        if both.sum() == 0 or positive.all() or not positive.any():
            continue
        weights = resample_weights(units[both], bootstrap)
        model_reps = weighted_auroc(scorers[MODEL][both], positive, weights)
        reader_reps = weighted_auroc(scorers[reader][both], positive, weights)
        ones = np.ones(int(both.sum()))
        model_auc = float(weighted_auroc(scorers[MODEL][both], positive, ones)[0])
        reader_auc = float(weighted_auroc(scorers[reader][both], positive, ones)[0])
        comparisons[reader] = {"images": float(both.sum()), "model_auroc": model_auc, "reader_auroc": reader_auc,
                               **paired_difference(reader_reps, model_reps, model_auc - reader_auc, bootstrap.level)}
    model_rows = usable[MODEL]
    return OutcomeAnalysis(
        column, int(model_rows.sum()), int((outcome[model_rows] == 1).sum()),
        f"{len(set(units[model_rows]))} {unit_name}",
        pd.DataFrame(rows).T, pd.DataFrame(points), pd.DataFrame(comparisons).T.rename_axis("reader"), roc)
