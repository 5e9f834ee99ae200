"""Metrics of 6-zone CSI predictions: per-zone classification, Unknown handling, CSI regression, AHF classes.

Inputs are `y_true` and `y_pred` of shape [N, 6] with classes 0-4 (4 = Unknown) and optionally the
softmax `probs` [N, 6, 5]. Policies shared by every metric here:

- Classification metrics (F1, precision, recall, accuracy) use only zones whose target is known;
  an Unknown target is not a class to score. A predicted Unknown on a known target is a wrong
  answer: it lowers the true class's recall and accuracy, but 4 is never a class of the average.
- Macro averages run over the classes that occur in the targets or the predictions (sklearn's
  default, minus Unknown). A class absent from both says nothing about the model; counting it as
  F1 = 0 would cap a perfect prediction of a zone without Severe cases at 0.75.
- Quadratic kappa needs a score on both sides, so it uses zones where target and prediction are
  both known; how often the model answers Unknown to a known zone is `unknown_pred_rate`.
- A metric with nothing to measure (no known target, a constant series) is NaN, never an error.

Every metric is a function of per-image counts (confusion matrices, sums of errors), so each
function also takes `weights` [B, N]: how many times each image counts in each of B resamples
(bootstrap counts). It then returns arrays [B] in one vectorised pass instead of floats; the
bootstrap therefore scores resamples with exactly the definitions below.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from src.config.names import (  # noqa: F401  (the metric names are published here too)
    AHF_CLASSES,
    HEADLINE_METRICS,
    KNOWN_CLASSES,
    METRIC_NAMES,
    UNKNOWN,
    VALIDATION_METRICS,
    ZONES,
)
from src.data.zones import csi_from_scores

ALL_CLASSES = (*KNOWN_CLASSES, UNKNOWN)
_QWK_WEIGHTS = np.subtract.outer(KNOWN_CLASSES, KNOWN_CLASSES) ** 2.0  # squared distance between scores


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != len(ZONES):
            raise ValueError(f"{name} must have shape [N, {len(ZONES)}], got {y.shape}")
        if not np.isin(y, ALL_CLASSES).all():
            raise ValueError(f"{name} must hold integer classes 0-4")
        arrays.append(y.astype(int))
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"y_true {arrays[0].shape} and y_pred {arrays[1].shape} differ in shape")
    return arrays[0], arrays[1]


def _check_probs(probs: np.ndarray, n: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.shape != (n, len(ZONES), len(ALL_CLASSES)):
        raise ValueError(f"probs must have shape [{n}, {len(ZONES)}, {len(ALL_CLASSES)}], got {probs.shape}")
    return probs


def _image_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """[B, N] weights of the images; a single unweighted pass is B = 1 with every weight 1."""
    if weights is None:
        return np.ones((1, n))
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must have shape [B, {n}], got {weights.shape}")
    return weights


def _finish(metrics: dict[str, np.ndarray], weights: np.ndarray | None) -> dict:
    """Plain floats for an unweighted call, arrays [B] for resample weights."""
    if weights is None:
        return {key: float(value[0]) for key, value in metrics.items()}
    return metrics


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where there is nothing to divide by."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _confusions(t: np.ndarray, p: np.ndarray, n_classes: int, weights: np.ndarray) -> np.ndarray:
    """[B, Z, n_classes, n_classes] weighted counts, rows true and columns predicted, of labels [N, Z]."""
    cells = np.arange(n_classes**2)
    onehot = (t * n_classes + p)[..., None] == cells  # [N, Z, K*K]
    counts = weights @ onehot.reshape(len(t), t.shape[1] * n_classes**2).astype(float)
    return counts.reshape(len(weights), t.shape[1], n_classes, n_classes)


def _scoped(zone_confusions: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(key suffix, confusion [B, K, K]): all zones pooled, then each zone."""
    yield "", zone_confusions.sum(axis=1)
    for i, zone in enumerate(ZONES):
        yield f"_{zone}", zone_confusions[:, i]


def _classification(confusion: np.ndarray, n_scored: int) -> dict[str, np.ndarray]:
    """Averaged F1/precision/recall and accuracy of confusions [B, K, K] over their first `n_scored`
    classes: later rows (Unknown targets) are not scored, later columns are wrong answers.

    Macro averages run over the classes present in targets or predictions; a present class with
    no prediction (or no target) has precision (recall) 0, as sklearn's zero_division=0.
    """
    scored = confusion[:, :n_scored, :]
    tp = np.diagonal(scored[:, :, :n_scored], axis1=1, axis2=2)
    n_true = scored.sum(axis=2)
    n_pred = scored[:, :, :n_scored].sum(axis=1)
    present = (n_true + n_pred) > 0
    total = n_true.sum(axis=1)

    def macro(per_class: np.ndarray) -> np.ndarray:
        return _ratio(np.where(present, per_class, 0).sum(axis=1) * (total > 0), present.sum(axis=1))

    f1 = np.nan_to_num(_ratio(2 * tp, n_true + n_pred))
    return {
        "f1_macro": macro(f1),
        "f1_weighted": _ratio((f1 * n_true).sum(axis=1), total),
        "precision_macro": macro(np.nan_to_num(_ratio(tp, n_pred))),
        "recall_macro": macro(np.nan_to_num(_ratio(tp, n_true))),
        "accuracy": _ratio(tp.sum(axis=1), total),
    }


def _qwk(confusion: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of confusions [B, 5, 5] on the zones known on both sides.

    All four scores are kept, so the weights are distances between scores even when a class is
    absent. One class on both sides leaves no disagreement observed nor expected: 0/0, NaN.
    """
    known = confusion[:, :UNKNOWN, :UNKNOWN]
    n = known.sum(axis=(1, 2))
    chance = known.sum(axis=2)[:, :, None] * known.sum(axis=1)[:, None, :]
    observed = (known * _QWK_WEIGHTS).sum(axis=(1, 2))
    expected = _ratio((chance * _QWK_WEIGHTS).sum(axis=(1, 2)), n)
    return 1 - _ratio(observed, np.nan_to_num(expected))


def _classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None) -> dict:
    """Every classification metric per scope; the public functions below pick their keys."""
    y_true, y_pred = _check(y_true, y_pred)
    w = _image_weights(weights, len(y_true))
    metrics = {}
    for suffix, confusion in _scoped(_confusions(y_true, y_pred, len(ALL_CLASSES), w)):
        for name, value in _classification(confusion, len(KNOWN_CLASSES)).items():
            metrics[f"{name}{suffix}"] = value
        metrics[f"qwk{suffix}"] = _qwk(confusion)
    return metrics


def classification_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """f1_macro, f1_weighted, precision_macro, recall_macro and accuracy, all zones pooled, of a
    [5, 5] count matrix (rows true, columns predicted, classes 0-4): the figures compute_all_metrics
    gives for the same labels, from counts a training loop sums batch by batch on its device."""
    confusion = np.asarray(confusion, dtype=float).reshape(1, len(ALL_CLASSES), len(ALL_CLASSES))
    return _finish(_classification(confusion, len(KNOWN_CLASSES)), None)


def _pick(metrics: dict, names: tuple[str, ...], weights: np.ndarray | None, pooled_only: tuple[str, ...] = ()) -> dict:
    """The `names` metrics, pooled and per zone (only pooled for `pooled_only`)."""
    suffixes = ("", *(f"_{zone}" for zone in ZONES))
    keys = [f"{n}{s}" for n in names for s in suffixes] + list(pooled_only)
    return _finish({key: metrics[key] for key in keys}, weights)


def compute_f1_metrics(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """`f1_macro`, `f1_weighted` over all zones pooled and `f1_macro_<zone>`, on known targets."""
    return _pick(_classification_metrics(y_true, y_pred, weights), ("f1_macro",), weights, ("f1_weighted",))


def compute_precision_recall(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """Macro precision, macro recall and accuracy on known targets, pooled and `_<zone>`."""
    names = ("precision_macro", "recall_macro", "accuracy")
    return _pick(_classification_metrics(y_true, y_pred, weights), names, weights)


def compute_qwk(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """Quadratic-weighted Cohen's kappa `qwk`, pooled and `qwk_<zone>`, where target and prediction are known."""
    return _pick(_classification_metrics(y_true, y_pred, weights), ("qwk",), weights)


def compute_unknown_metrics(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """`unknown_pred_rate`: share of known targets predicted Unknown; `unknown_recall`: of Unknown targets."""
    y_true, y_pred = _check(y_true, y_pred)
    w = _image_weights(weights, len(y_true))
    known = y_true != UNKNOWN
    predicted_unknown = y_pred == UNKNOWN
    return _finish({
        "unknown_pred_rate": _ratio(w @ (predicted_unknown & known).sum(1), w @ known.sum(1)),
        "unknown_recall": _ratio(w @ (predicted_unknown & ~known).sum(1), w @ (~known).sum(1)),
    }, weights)


def expected_scores(probs: np.ndarray) -> np.ndarray:
    """[N, 6] expected zone score: mean of classes 0-3 under the known-class probabilities renormalised.

    NaN for a zone whose probability is all on Unknown.
    """
    known = np.asarray(probs, dtype=float)[..., :UNKNOWN]
    with np.errstate(invalid="ignore", divide="ignore"):
        return known @ np.arange(UNKNOWN, dtype=float) / known.sum(axis=-1)


def expected_csi(probs: np.ndarray) -> np.ndarray:
    """[N] soft CSI: the mean of `expected_scores` over zones, each weighted by its probability of being known.

    The smooth counterpart of averaging the zones predicted known; NaN when no zone has known mass.
    """
    known = np.asarray(probs, dtype=float)[..., :UNKNOWN]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (known @ np.arange(UNKNOWN, dtype=float)).sum(axis=-1) / known.sum(axis=(-1, -2))


def predicted_csi(y_pred: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """[N] CSI of predictions: mean of the zones predicted known, else `expected_csi(probs)` when
    probs are given, else NaN."""
    pred = csi_from_scores(y_pred)
    if probs is not None:
        pred = np.where(np.isnan(pred), expected_csi(probs), pred)
    return pred


def csi_pairs(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """[N] true and predicted CSI of every image; NaN where undefined (no known zone, no fallback)."""
    y_true, y_pred = _check(y_true, y_pred)
    if probs is not None:
        probs = _check_probs(probs, len(y_true))
    return csi_from_scores(y_true), predicted_csi(y_pred, probs)


def _pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson r per row of w [B, n]; NaN for fewer than two images or a constant series."""
    total = w.sum(axis=1)
    da, db = a - _ratio(w @ a, total)[:, None], b - _ratio(w @ b, total)[:, None]
    counted = w > 0

    def varies(x: np.ndarray) -> np.ndarray:  # exact test: a constant series has rounding-size variance
        return np.where(counted, x, np.inf).min(axis=1, initial=np.inf) < np.where(counted, x, -np.inf).max(
            axis=1, initial=-np.inf)

    r = _ratio((w * da * db).sum(axis=1), np.sqrt((w * da**2).sum(axis=1) * (w * db**2).sum(axis=1)))
    return np.where(varies(a) & varies(b), np.clip(r, -1, 1), np.nan)


def _regression(true: np.ndarray, pred: np.ndarray, w: np.ndarray, suffix: str = "") -> dict[str, np.ndarray]:
    error = pred - true
    total = w.sum(axis=1)
    return {
        f"csi_mae{suffix}": _ratio(w @ np.abs(error), total),
        f"csi_rmse{suffix}": np.sqrt(_ratio(w @ error**2, total)),
        f"csi_pearson{suffix}": _pearson(true, pred, w),
    }


def compute_csi_average_metrics(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None,
                                weights: np.ndarray | None = None) -> dict:
    """MAE, RMSE and Pearson r of the per-image CSI, over images whose true CSI is defined.

    The predicted CSI averages the zones predicted known. An image with none falls back to
    `expected_csi(probs)` when probs are given; otherwise it is left out and counted in
    `csi_n_undefined_pred`. With probs, `csi_*_expected` also score `expected_csi(probs)` on every image.
    """
    true, pred = csi_pairs(y_true, y_pred, probs)
    w = _image_weights(weights, len(true))
    scored = ~np.isnan(true)
    both = scored & ~np.isnan(pred)
    metrics = {"csi_n_undefined_pred": w @ (scored & ~both).astype(float),
               **_regression(true[both], pred[both], w[:, both])}
    if probs is not None:
        soft = expected_csi(probs)
        keep = scored & ~np.isnan(soft)
        metrics.update(_regression(true[keep], soft[keep], w[:, keep], "_expected"))
    return _finish(metrics, weights)


def ahf_class(csi: np.ndarray, low: float, high: float) -> np.ndarray:
    """AHF class of each CSI: 0 low (csi <= low), 1 medium (csi <= high), 2 high (csi > high).

    The thresholds are [Evaluation] ahf_low_threshold and ahf_high_threshold: every caller passes them."""
    csi = np.asarray(csi, dtype=float)
    if low >= high:
        raise ValueError(f"AHF thresholds need low < high, got low={low}, high={high}")
    if np.isnan(csi).any():
        raise ValueError("csi contains NaN: drop images whose CSI is undefined first")
    return np.where(csi <= low, 0, np.where(csi <= high, 1, 2))


def _ahf_confusions(y_true: np.ndarray, y_pred: np.ndarray, low: float, high: float, probs: np.ndarray | None,
                    weights: np.ndarray | None) -> np.ndarray:
    """[B, 3, 3] weighted counts of AHF classes over the images where both CSIs are defined."""
    true, pred = csi_pairs(y_true, y_pred, probs)
    w = _image_weights(weights, len(true))
    both = ~np.isnan(true) & ~np.isnan(pred)
    t, p = ahf_class(true[both], low, high), ahf_class(pred[both], low, high)
    return _confusions(t[:, None], p[:, None], len(AHF_CLASSES), w[:, both])[:, 0]


def compute_ahf_classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    low: float,
    high: float,
    probs: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict:
    """`ahf_accuracy` and `ahf_f1_macro` of the AHF class (low/medium/high) of true vs predicted CSI."""
    scores = _classification(_ahf_confusions(y_true, y_pred, low, high, probs, weights), len(AHF_CLASSES))
    return _finish({"ahf_accuracy": scores["accuracy"], "ahf_f1_macro": scores["f1_macro"]}, weights)


def ahf_confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    low: float,
    high: float,
    probs: np.ndarray | None = None,
) -> np.ndarray:
    """[3, 3] counts of AHF classes, rows true and columns predicted, in `AHF_CLASSES` order."""
    return _ahf_confusions(y_true, y_pred, low, high, probs, None)[0].astype(int)


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """5x5 counts over classes 0-4 (rows true, columns predicted), per zone and "overall"; Unknown included."""
    y_true, y_pred = _check(y_true, y_pred)
    zones = _confusions(y_true, y_pred, len(ALL_CLASSES), _image_weights(None, len(y_true)))
    return {suffix.lstrip("_") or "overall": matrix[0].astype(int) for suffix, matrix in _scoped(zones)}


def compute_all_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray | None = None,
    *,
    ahf_low: float,
    ahf_high: float,
    weights: np.ndarray | None = None,
) -> dict:
    """Every metric of this module in one flat dict: plain floats (NaN where undefined), or arrays [B]
    under resample `weights` [B, N]."""
    classification = _classification_metrics(y_true, y_pred, weights)
    return {
        **_pick(classification, ("f1_macro",), weights, ("f1_weighted",)),
        **_pick(classification, ("precision_macro", "recall_macro", "accuracy"), weights),
        **_pick(classification, ("qwk",), weights),
        **compute_unknown_metrics(y_true, y_pred, weights),
        **compute_csi_average_metrics(y_true, y_pred, probs, weights),
        **compute_ahf_classification_metrics(y_true, y_pred, ahf_low, ahf_high, probs, weights),
    }
