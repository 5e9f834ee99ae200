"""Is the model as good as a radiologist? Each reader against the consensus of the others
(leave-one-out), the model against the same consensus, and where the model falls in the readers' range.

Invariants:
- Reference of reader r: the consensus ([Data] consensus, src/data/consensus.py) of every other
  reader, on the images r read and at least one other scored. The model is scored against that
  same reference on the same images, so each reader has a paired model score.
- Metrics: QWK of the zone scores (zones known on both sides), CSI MAE, and ICC(2,1) of the CSI
  (absolute agreement, F-based CI); QWK and MAE with percentile-bootstrap CIs over the same
  resamples (patients where known) for reader and model, whose paired difference model - reader
  has its own CI and p. Definitions are compute_all_metrics' and icc_absolute_agreement's.
- The range: per metric, the readers' lowest and highest value, the model's mean over the
  references, and on how many references the model did better than the reader left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.consensus import NOT_READ, consensus
from src.data.zones import UNKNOWN, csi_from_scores
from src.engine.metrics import compute_all_metrics, csi_pairs
from src.evaluation.agreement import icc_absolute_agreement
from src.evaluation.bootstrap import BootstrapSettings, paired_difference, percentile_interval, resample_weights

MODEL = "model"
# metric key -> (label, whether higher is better)
STUDY_METRICS = {"qwk": ("QWK", True), "icc": ("CSI ICC(2,1)", True), "csi_mae": ("CSI MAE", False)}


@dataclass
class ReaderStudy:
    rule: str  # the consensus rule of the references
    resampled: str  # what the bootstrap resampled
    scores: pd.DataFrame  # one row per (reference, who): images, each metric and its CI
    range: pd.DataFrame  # per metric: readers' min and max, the model's mean, where it falls
    differences: pd.DataFrame  # per (reference, metric): model - reader, CI, p
    figures: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"consensus": self.rule, "resampled": self.resampled,
                "scores": self.scores.to_dict("records"), "range": self.range.reset_index().to_dict("records"),
                "model_minus_reader": self.differences.to_dict("records")}


def _scored(reference: np.ndarray, predicted: np.ndarray, probs: np.ndarray | None, weights: np.ndarray,
            ahf: tuple[float, float], level: float) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Observed QWK, CSI MAE and ICC (with CI bounds) of `predicted` against `reference`, and the QWK and
    MAE replicates under `weights`."""
    observed = compute_all_metrics(reference, predicted, probs, ahf_low=ahf[0], ahf_high=ahf[1])
    replicates = compute_all_metrics(reference, predicted, probs, ahf_low=ahf[0], ahf_high=ahf[1], weights=weights)
    true, pred = csi_pairs(reference, predicted, probs)
    both = ~np.isnan(true) & ~np.isnan(pred)
    icc = icc_absolute_agreement(np.column_stack([true[both], pred[both]]), level)
    row = {"icc": icc["icc"], "icc_ci_low": icc["ci_low"], "icc_ci_high": icc["ci_high"]}
    for name in ("qwk", "csi_mae"):
        low, high = percentile_interval(replicates[name], level)
        row |= {name: observed[name], f"{name}_ci_low": low, f"{name}_ci_high": high}
    return row, {name: replicates[name] for name in ("qwk", "csi_mae")}


def _position(model: float, low: float, high: float, higher_better: bool) -> str:
    if np.isnan(model) or np.isnan(low):
        return "undefined"
    if low <= model <= high:
        return "within the readers' range"
    return "better than every reader" if (model > high) == higher_better else "worse than every reader"


def study_readers(readers: dict[str, np.ndarray], probs: np.ndarray, units: Sequence[str], unit_name: str,
                  rule: str, bootstrap: BootstrapSettings, ahf: tuple[float, float]) -> ReaderStudy | None:
    """The leave-one-out study of `readers` (name -> [N, 6] scores, NOT_READ where not read) and the
    model's probabilities [N, 6, 5] of the same images; None with fewer than two readers."""
    if len(readers) < 2:
        return None
    names, stacked = list(readers), np.stack(list(readers.values()))
    units = np.asarray(units)
    scores, differences = [], []
    for r, name in enumerate(names):
        reference = consensus(np.delete(stacked, r, axis=0), rule)
        rows = (stacked[r] != NOT_READ).any(axis=1) & (reference != UNKNOWN).any(axis=1)
        if rows.sum() < 3:
            continue
        weights = resample_weights(units[rows], bootstrap)
        ref = reference[rows]
        reader_row, reader_reps = _scored(ref, stacked[r][rows], None, weights, ahf, bootstrap.level)
        model_row, model_reps = _scored(ref, probs[rows].argmax(-1), probs[rows], weights, ahf, bootstrap.level)
        label = f"consensus without {name}"
        scores += [{"reference": label, "left_out": name, "who": name, "images": int(rows.sum()), **reader_row},
                   {"reference": label, "left_out": name, "who": MODEL, "images": int(rows.sum()), **model_row}]
        for metric in ("qwk", "csi_mae"):
            differences.append({"reference": label, "left_out": name, "metric": metric, **paired_difference(
                reader_reps[metric], model_reps[metric], model_row[metric] - reader_row[metric], bootstrap.level)})
    if not scores:
        return None
    table = pd.DataFrame(scores)
    readers_only, model_only = table[table["who"] != MODEL], table[table["who"] == MODEL]
    ranges = {}
    for metric, (label, higher_better) in STUDY_METRICS.items():
        low, high = readers_only[metric].min(), readers_only[metric].max()
        model_values = model_only[metric].to_numpy()
        better = model_values > readers_only[metric].to_numpy() if higher_better else (
            model_values < readers_only[metric].to_numpy())
        mean = float(np.nanmean(model_values)) if np.isfinite(model_values).any() else float("nan")
        ranges[label] = {"readers_min": low, "readers_max": high, "model_mean": mean,
                         "model_min": float(np.nanmin(model_values)) if np.isfinite(model_values).any() else np.nan,
                         "model_max": float(np.nanmax(model_values)) if np.isfinite(model_values).any() else np.nan,
                         "model_better_than_left_out": f"{int(better.sum())} of {len(better)}",
                         "position": _position(mean, low, high, higher_better)}
    return ReaderStudy(rule, f"{len(set(units))} {unit_name}", table, pd.DataFrame(ranges).T.rename_axis("metric"),
                       pd.DataFrame(differences))


def reader_csi(readers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each reader's CSI per image (NaN where they did not read it or scored no zone)."""
    return {name: np.where((s != NOT_READ).any(axis=1), csi_from_scores(np.where(s == NOT_READ, UNKNOWN, s)), np.nan)
            for name, s in readers.items()}
