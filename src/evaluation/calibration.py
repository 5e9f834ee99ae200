"""Are the zone probabilities honest? Reliability, expected calibration error, Brier score, and
temperature scaling.

Calibration is measured over the known classes, like every score metric: zones with an Unknown
target are left out and each zone's probabilities are renormalised over the scores 0-3. The
confidence of a zone is its largest renormalised probability, and it is right when that class is
the target.

Temperature scaling divides the log-probabilities by one temperature T > 1 (softening) or < 1
(sharpening) and renormalises, which is softmax(logits / T) for a softmax model and works for
any model that outputs probabilities (the ordinal head too). Scaling commutes with the
renormalisation over known classes, so a T fitted on known classes applies to the five-class
output unchanged; and it never changes which class is most probable, so no score metric moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from src.data.zones import UNKNOWN, ZONES
from src.utils.errors import CheckpointError

N_BINS = 10
_TINY = 1e-12  # floor of probabilities before logs and renormalisation
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def known_zone_samples(probs: np.ndarray, targets: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(scope, probabilities [M, 4] renormalised over the known classes, targets [M]) of the zones with
    a known target: every zone pooled ("overall"), then each zone."""
    probs, targets = np.asarray(probs, dtype=float), np.asarray(targets)
    known = np.maximum(probs[..., :UNKNOWN], _TINY)
    known = known / known.sum(axis=-1, keepdims=True)
    keep = targets != UNKNOWN
    yield "overall", known[keep], targets[keep]
    for z, zone in enumerate(ZONES):
        yield zone, known[keep[:, z], z], targets[keep[:, z], z]


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin ([i/n, (i+1)/n), the last one closed): count, mean confidence, accuracy
    (NaN for an empty bin) of class probabilities [M, C] against targets [M]."""
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == targets
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count,
                "confidence": np.bincount(index, confidence, minlength=n_bins) / count,
                "accuracy": np.bincount(index, correct, minlength=n_bins) / count}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of samples; NaN without any."""
    bins = reliability_bins(probs, targets, n_bins)
    if bins["count"].sum() == 0:
        return float("nan")
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((gaps * bins["count"][filled]).sum() / bins["count"].sum())


def brier_score(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over samples of the squared distance between the probabilities and the one-hot target."""
    if len(targets) == 0:
        return float("nan")
    onehot = np.eye(probs.shape[-1])[targets]
    return float(((probs - onehot) ** 2).sum(axis=-1).mean())


def negative_log_likelihood(probs: np.ndarray, targets: np.ndarray) -> float:
    if len(targets) == 0:
        return float("nan")
    return float(-np.log(np.maximum(probs[np.arange(len(targets)), targets], _TINY)).mean())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (any number of classes, last axis) with their log divided by `temperature`, renormalised."""
    logits = np.log(np.maximum(np.asarray(probs, dtype=float), _TINY)) / temperature
    scaled = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return scaled / scaled.sum(axis=-1, keepdims=True)


def fitted_tta(calibration: dict) -> str:
    """The [Evaluation] tta of the predictions a stored temperature was fitted on (none before TTA existed)."""
    return calibration.get("tta", "none")


def stored_temperature(state: dict, checkpoint: str | Path, tta: str) -> float:
    """The temperature eval fitted on the run's validation split and kept in the checkpoint, for
    predictions made with [Evaluation] tta = `tta` (a temperature fits the outputs it was fitted on)."""
    if "calibration" not in state:
        raise CheckpointError(f"{checkpoint}: no fitted temperature for [Evaluation] calibrate = true; run "
                              "python main.py --mode eval on its run first (it fits one on the validation split)")
    if fitted_tta(state["calibration"]) != tta:
        raise CheckpointError(f"{checkpoint}: its temperature was fitted with [Evaluation] tta = "
                              f"{fitted_tta(state['calibration'])}, not {tta}; run python main.py --mode eval on its "
                              f"run with tta = {tta} first (it fits the temperature again)")
    return float(state["calibration"]["temperature"])


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature (0.05-20) that minimises the NLL of the known-target zones of [N, 6, 5]
    probabilities; 1 when there is no known target to fit on."""
    _, known, t = next(known_zone_samples(probs, targets))
    if len(t) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: negative_log_likelihood(apply_temperature(known, np.exp(log_t)), t),
                             bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def calibration_report(probs: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, dict[str, float]]:
    """Per scope (overall, each zone): zones scored, ECE, Brier and NLL before and after `temperature`."""
    report = {}
    for scope, known, t in known_zone_samples(probs, targets):
        scaled = apply_temperature(known, temperature)
        report[scope] = {"zones": float(len(t))}
        for stage, p in (("before", known), ("after", scaled)):
            report[scope] |= {f"ece_{stage}": expected_calibration_error(p, t), f"brier_{stage}": brier_score(p, t),
                              f"nll_{stage}": negative_log_likelihood(p, t)}
    return report
