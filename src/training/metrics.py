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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import cohen_kappa_score, f1_score, precision_score, recall_score

from src.data.zones import KNOWN_CLASSES, UNKNOWN, ZONES, csi_from_scores

AHF_CLASSES = ("low", "medium", "high")
ALL_CLASSES = (*KNOWN_CLASSES, UNKNOWN)


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


def _scopes(y_true: np.ndarray, y_pred: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(key suffix, targets, predictions): all zones pooled, then each zone."""
    yield "", y_true.ravel(), y_pred.ravel()
    for i, zone in enumerate(ZONES):
        yield f"_{zone}", y_true[:, i], y_pred[:, i]


def _known_targets(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = t != UNKNOWN
    return t[keep], p[keep]


def _present(t: np.ndarray, p: np.ndarray, classes: Sequence[int]) -> list[int]:
    """The classes that occur in targets or predictions: the labels of a macro average."""
    return [c for c in classes if np.any(t == c) or np.any(p == c)]


def _averaged(
    score: Callable[..., float], t: np.ndarray, p: np.ndarray, average: str, classes: Sequence[int] = KNOWN_CLASSES
) -> float:
    """`score` (an sklearn F1/precision/recall) averaged over the classes present; NaN without samples."""
    if t.size == 0:
        return float("nan")
    return float(score(t, p, labels=_present(t, p, classes), average=average, zero_division=0))


def _confusion(t: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts, rows true and columns predicted; all zeros without samples."""
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def compute_f1_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """`f1_macro`, `f1_weighted` over all zones pooled and `f1_macro_<zone>`, on known targets."""
    y_true, y_pred = _check(y_true, y_pred)
    metrics = {
        f"f1_macro{suffix}": _averaged(f1_score, *_known_targets(t, p), "macro")
        for suffix, t, p in _scopes(y_true, y_pred)
    }
    metrics["f1_weighted"] = _averaged(f1_score, *_known_targets(y_true.ravel(), y_pred.ravel()), "weighted")
    return metrics


def compute_precision_recall(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Macro precision, macro recall and accuracy on known targets, pooled and `_<zone>`."""
    y_true, y_pred = _check(y_true, y_pred)
    metrics = {}
    for suffix, t, p in _scopes(y_true, y_pred):
        t, p = _known_targets(t, p)
        metrics[f"precision_macro{suffix}"] = _averaged(precision_score, t, p, "macro")
        metrics[f"recall_macro{suffix}"] = _averaged(recall_score, t, p, "macro")
        metrics[f"accuracy{suffix}"] = _mean(t == p)
    return metrics


def _qwk(t: np.ndarray, p: np.ndarray) -> float:
    keep = (t != UNKNOWN) & (p != UNKNOWN)
    t, p = t[keep], p[keep]
    # One class on both sides: no disagreement observed nor expected by chance, so kappa is 0/0.
    if t.size == 0 or (np.all(t == t[0]) and np.all(p == t[0])):
        return float("nan")
    # All four labels, so that the quadratic weights are distances between scores even when a class is absent.
    return float(cohen_kappa_score(t, p, labels=list(KNOWN_CLASSES), weights="quadratic"))


def compute_qwk(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Quadratic-weighted Cohen's kappa `qwk`, pooled and `qwk_<zone>`, where target and prediction are known."""
    y_true, y_pred = _check(y_true, y_pred)
    return {f"qwk{suffix}": _qwk(t, p) for suffix, t, p in _scopes(y_true, y_pred)}


def compute_unknown_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """`unknown_pred_rate`: share of known targets predicted Unknown; `unknown_recall`: of Unknown targets."""
    y_true, y_pred = _check(y_true, y_pred)
    known = y_true != UNKNOWN
    predicted_unknown = y_pred == UNKNOWN
    return {
        "unknown_pred_rate": _mean(predicted_unknown[known]),
        "unknown_recall": _mean(predicted_unknown[~known]),
    }


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


def _csi_pairs(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted CSI of the images whose true CSI is defined; predicted NaN where undefined."""
    true, pred = csi_from_scores(y_true), predicted_csi(y_pred, probs)
    keep = ~np.isnan(true)
    return true[keep], pred[keep]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    # Undefined (NaN) for a constant series; checked here because scipy would warn on each epoch.
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(pearsonr(a, b).statistic)


def _regression(true: np.ndarray, pred: np.ndarray, suffix: str = "") -> dict[str, float]:
    error = pred - true
    return {
        f"csi_mae{suffix}": _mean(np.abs(error)),
        f"csi_rmse{suffix}": float(np.sqrt(_mean(error**2))),
        f"csi_pearson{suffix}": _pearson(true, pred),
    }


def compute_csi_average_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None
) -> dict[str, float]:
    """MAE, RMSE and Pearson r of the per-image CSI, over images whose true CSI is defined.

    The predicted CSI averages the zones predicted known. An image with none falls back to
    `expected_csi(probs)` when probs are given; otherwise it is left out and counted in
    `csi_n_undefined_pred`. With probs, `csi_*_expected` also score `expected_csi(probs)` on every image.
    """
    y_true, y_pred = _check(y_true, y_pred)
    if probs is not None:
        probs = _check_probs(probs, len(y_true))
    true, pred = _csi_pairs(y_true, y_pred, probs)
    defined = ~np.isnan(pred)
    metrics = {"csi_n_undefined_pred": float(np.sum(~defined)), **_regression(true[defined], pred[defined])}
    if probs is not None:
        true = csi_from_scores(y_true)
        soft = expected_csi(probs)
        keep = ~np.isnan(true) & ~np.isnan(soft)
        metrics.update(_regression(true[keep], soft[keep], "_expected"))
    return metrics


def ahf_class(csi: np.ndarray, low: float = 1.3, high: float = 2.2) -> np.ndarray:
    """AHF class of each CSI: 0 low (csi <= low), 1 medium (csi <= high), 2 high (csi > high)."""
    csi = np.asarray(csi, dtype=float)
    if low >= high:
        raise ValueError(f"AHF thresholds need low < high, got low={low}, high={high}")
    if np.isnan(csi).any():
        raise ValueError("csi contains NaN: drop images whose CSI is undefined first")
    return np.where(csi <= low, 0, np.where(csi <= high, 1, 2))


def _ahf_pairs(
    y_true: np.ndarray, y_pred: np.ndarray, low: float, high: float, probs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted AHF classes of the images where both CSIs are defined."""
    y_true, y_pred = _check(y_true, y_pred)
    if probs is not None:
        probs = _check_probs(probs, len(y_true))
    true, pred = _csi_pairs(y_true, y_pred, probs)
    defined = ~np.isnan(pred)
    return ahf_class(true[defined], low, high), ahf_class(pred[defined], low, high)


def compute_ahf_classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    low: float = 1.3,
    high: float = 2.2,
    probs: np.ndarray | None = None,
) -> dict[str, float]:
    """`ahf_accuracy` and `ahf_f1_macro` of the AHF class (low/medium/high) of true vs predicted CSI."""
    t, p = _ahf_pairs(y_true, y_pred, low, high, probs)
    return {
        "ahf_accuracy": _mean(t == p),
        "ahf_f1_macro": _averaged(f1_score, t, p, "macro", classes=range(len(AHF_CLASSES))),
    }


def ahf_confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    low: float = 1.3,
    high: float = 2.2,
    probs: np.ndarray | None = None,
) -> np.ndarray:
    """[3, 3] counts of AHF classes, rows true and columns predicted, in `AHF_CLASSES` order."""
    t, p = _ahf_pairs(y_true, y_pred, low, high, probs)
    return _confusion(t, p, len(AHF_CLASSES))


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """5x5 counts over classes 0-4 (rows true, columns predicted), per zone and "overall"; Unknown included."""
    y_true, y_pred = _check(y_true, y_pred)
    return {
        suffix.lstrip("_") or "overall": _confusion(t, p, len(ALL_CLASSES))
        for suffix, t, p in _scopes(y_true, y_pred)
    }


def compute_all_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray | None = None,
    ahf_low: float = 1.3,
    ahf_high: float = 2.2,
) -> dict[str, float]:
    """Every float metric of this module in one flat dict of plain floats (NaN where undefined)."""
    metrics = {
        **compute_f1_metrics(y_true, y_pred),
        **compute_precision_recall(y_true, y_pred),
        **compute_qwk(y_true, y_pred),
        **compute_unknown_metrics(y_true, y_pred),
        **compute_csi_average_metrics(y_true, y_pred, probs),
        **compute_ahf_classification_metrics(y_true, y_pred, ahf_low, ahf_high, probs),
    }
    return {key: float(value) for key, value in metrics.items()}
