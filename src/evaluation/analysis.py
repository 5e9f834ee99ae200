"""What eval reports beside each split's metrics: bootstrap intervals, agreement of the CSI with
the radiologist's, and calibration of the zone probabilities (before and after temperature
scaling fitted on the validation split)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.engine.metrics import csi_pairs
from src.engine.predict import Predictions
from src.evaluation.agreement import bland_altman, icc_absolute_agreement
from src.evaluation.bootstrap import BootstrapSettings, metric_intervals, resampling_units
from src.evaluation.calibration import apply_temperature, calibration_report, fit_temperature, known_zone_samples
from src.evaluation.calibration import negative_log_likelihood as nll
from src.evaluation.stat_plots import plot_agreement, plot_reliability


@dataclass
class SplitAnalysis:
    intervals: dict[str, tuple[float, float]]  # metric -> 95% bootstrap interval
    units: str  # "patients" or "images": what the bootstrap resampled
    n_units: int
    bland_altman: dict[str, float]
    icc: dict[str, float]
    calibration: dict[str, dict[str, float]]  # scope -> ECE/Brier/NLL before and after
    figures: list[Path]


def fit_calibration(val: Predictions) -> dict[str, float]:
    """Temperature scaling fitted on the validation predictions, as stored with the checkpoint."""
    temperature = fit_temperature(val.probs, val.targets)
    _, known, t = next(known_zone_samples(val.probs, val.targets))
    scaled = apply_temperature(known, temperature)
    return {"temperature": temperature, "fitted_on_images": float(len(val.file_ids)),
            "val_nll_before": nll(known, t), "val_nll_after": nll(scaled, t)}


def analyse_split(pred: Predictions, split: str, patients: Sequence[str] | None, bootstrap: BootstrapSettings,
                  ahf: tuple[float, float], temperature: float, out: Path, plot: bool = True) -> SplitAnalysis:
    """Statistics of one split's predictions (`patients`: the PatientID of each image, where known);
    with `plot`, also writes agreement_<split>.png and calibration_<split>.png."""
    units = resampling_units(pred.file_ids, patients)
    y_pred = pred.probs.argmax(-1)
    intervals = metric_intervals(pred.targets, y_pred, pred.probs, units, bootstrap, *ahf)
    true, predicted = csi_pairs(pred.targets, y_pred, pred.probs)
    both = ~np.isnan(true) & ~np.isnan(predicted)
    true, predicted = true[both], predicted[both]
    agreement, icc = bland_altman(true, predicted), icc_absolute_agreement(np.column_stack([true, predicted]))
    calibration = calibration_report(pred.probs, pred.targets, temperature)
    figures = []
    if plot and len(true) >= 3:
        figures.append(out / f"agreement_{split}.png")
        plot_agreement(true, predicted, agreement, icc, f"{split}: predicted vs true CSI", figures[-1])
    if plot:
        figures.append(out / f"calibration_{split}.png")
        plot_reliability(pred.probs, pred.targets, temperature, calibration,
                         f"{split}: reliability of the zone probabilities (known targets)", figures[-1])
    return SplitAnalysis(intervals, "images" if patients is None else "patients", len(set(units)), agreement,
                         icc, calibration, figures)


def analyses_json(analyses: dict[str, SplitAnalysis], bootstrap: BootstrapSettings,
                  calibration: dict[str, float] | None) -> dict:
    """The entries metrics.json holds beside "metrics": intervals, agreement and calibration per split."""
    return {
        "metrics_ci95": {split: {k: list(v) for k, v in a.intervals.items()} for split, a in analyses.items()},
        "bootstrap": {"samples": bootstrap.samples, "seed": bootstrap.seed, "level": bootstrap.level,
                      "resampled": {split: f"{a.n_units} {a.units}" for split, a in analyses.items()}},
        "agreement": {split: {"bland_altman": a.bland_altman, "icc_2_1": a.icc} for split, a in analyses.items()},
        "calibration": {"temperature": calibration,
                        **{split: a.calibration for split, a in analyses.items()}},
    }
