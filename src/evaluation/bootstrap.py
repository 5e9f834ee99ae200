"""Bootstrap confidence intervals of the evaluation metrics, resampling images or patients.

Invariants:
- The resampling unit is the patient when PatientID is known (a patient's images are not
  independent observations), else the image. Each replicate draws as many units as the split
  has, with replacement, and every image of a drawn unit counts once per draw.
- Replicates are scored by `compute_all_metrics(..., weights=)`: the very definitions eval
  reports, vectorised over resamples, never a second implementation.
- Intervals are percentile intervals. A replicate in which a metric is undefined (NaN: e.g. no
  known target of a zone was drawn) is left out of that metric's interval only.
- Paired comparisons draw the same units for both runs, so differences keep their pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src.engine.metrics import compute_all_metrics

LEVEL = 0.95


@dataclass(frozen=True)
class BootstrapSettings:
    samples: int
    seed: int
    level: float = LEVEL


def resampling_units(file_ids: Sequence[str], patients: Sequence[str] | None) -> np.ndarray:
    """The unit of each image: its PatientID where known, else its own FileID (prefixed, so that a
    FileID never joins a patient of the same name)."""
    ids = [f"image:{f}" for f in file_ids]
    if patients is None:
        return np.asarray(ids)
    return np.asarray([f"patient:{p}" if p not in (None, "") and p == p else i for p, i in zip(patients, ids)])


def resample_weights(units: Sequence, settings: BootstrapSettings) -> np.ndarray:
    """[samples, N] how often each image is drawn in each replicate (its unit's draw count)."""
    _, unit_of_image = np.unique(np.asarray(units, dtype=str), return_inverse=True)
    n_units = unit_of_image.max() + 1 if len(unit_of_image) else 0
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, max(n_units, 1), (settings.samples, n_units))
    counts = np.zeros((settings.samples, n_units))
    np.add.at(counts, (np.arange(settings.samples)[:, None], draws), 1)
    return counts[:, unit_of_image]


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) percentile interval of the finite replicates; NaNs when there are none."""
    finite = np.asarray(replicates, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def metric_intervals(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None, units: Sequence,
                     settings: BootstrapSettings, ahf_low: float, ahf_high: float
                     ) -> dict[str, tuple[float, float]]:
    """Bootstrap interval of every metric of compute_all_metrics."""
    weights = resample_weights(units, settings)
    replicates = compute_all_metrics(y_true, y_pred, probs, ahf_low=ahf_low, ahf_high=ahf_high, weights=weights)
    return {name: percentile_interval(values, settings.level) for name, values in replicates.items()}


def paired_difference(a: np.ndarray, b: np.ndarray, observed: float, level: float = LEVEL
                      ) -> dict[str, float]:
    """Difference B - A of one metric from paired replicates: its observed value, interval and two-sided p.

    p is twice the smaller share of replicates on either side of 0 (with the +1 correction that
    keeps a finite number of replicates from claiming p = 0), capped at 1.
    """
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    diff = diff[np.isfinite(diff)]
    low, high = percentile_interval(diff, level)
    if diff.size == 0:
        return {"difference": observed, "ci_low": low, "ci_high": high, "p_value": float("nan")}
    tail = min(np.sum(diff <= 0), np.sum(diff >= 0))
    p = min(1.0, 2 * (tail + 1) / (diff.size + 1))
    return {"difference": observed, "ci_low": low, "ci_high": high, "p_value": float(p)}
