"""Evaluation statistics against independent computations: bootstrap coverage on simulated data,
ICC on Shrout & Fleiss's table, Bland-Altman and ECE by hand, temperature scaling on a known
miscalibration."""

import numpy as np
import pytest

from src.data.zones import UNKNOWN
from src.evaluation.agreement import bland_altman, icc_absolute_agreement
from src.evaluation.bootstrap import (
    BootstrapSettings,
    metric_intervals,
    paired_difference,
    resample_weights,
    resampling_units,
)
from src.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)

SHIFT_PROBS = (0.15, 0.7, 0.15)  # zone prediction = true score -1, 0, +1 (clipped to 0-3)


def _simulate(rng, n_patients, images_per_patient):
    """Patients whose images are copies of one another (their errors are correlated)."""
    true = rng.integers(0, 4, (n_patients, 6))
    pred = np.clip(true + rng.choice([-1, 0, 1], true.shape, p=SHIFT_PROBS), 0, 3)
    return np.repeat(true, images_per_patient, 0), np.repeat(pred, images_per_patient, 0)


def _population_values(rng):
    """Accuracy and CSI MAE of the simulated process, from a very large sample and plain numpy."""
    true, pred = _simulate(rng, 400_000, 1)
    return np.mean(true == pred), np.mean(np.abs(pred.mean(1) - true.mean(1)))


def test_bootstrap_intervals_cover_the_true_value_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    accuracy, mae = _population_values(rng)
    settings = BootstrapSettings(samples=200, seed=1)
    covered = {"patients": [], "images": []}
    for _ in range(150):
        true, pred = _simulate(rng, 40, 3)
        patients = [f"P{i // 3}" for i in range(len(true))]
        ids = [str(i) for i in range(len(true))]
        for unit, groups in (("patients", patients), ("images", None)):
            ci = metric_intervals(true, pred, None, resampling_units(ids, groups), settings, 1.3, 2.2)
            covered[unit].append([ci["accuracy"][0] <= accuracy <= ci["accuracy"][1],
                                  ci["csi_mae"][0] <= mae <= ci["csi_mae"][1]])
    by_patient, by_image = np.mean(covered["patients"], 0), np.mean(covered["images"], 0)
    # 150 experiments: the binomial SD of a 95% rate is 1.8 points.
    assert np.all((by_patient > 0.89) & (by_patient < 0.995)), by_patient
    # Resampling images treats three copies as three patients: intervals ~sqrt(3) too narrow (~74%).
    assert np.all(by_image < 0.85), by_image


def test_resampling_draws_whole_patients():
    units = resampling_units(["a", "b", "c", "d", "e"], ["P1", "P1", "", "P2", "P2"])
    weights = resample_weights(units, BootstrapSettings(samples=50, seed=3))
    assert weights.shape == (50, 5)
    assert np.all(weights[:, 0] == weights[:, 1]) and np.all(weights[:, 3] == weights[:, 4])
    assert np.all(weights[:, [0, 2, 3]].sum(1) == 3)  # three units drawn per replicate: P1, image c, P2
    assert np.array_equal(weights, resample_weights(units, BootstrapSettings(samples=50, seed=3)))


def test_paired_difference_p_value():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.02, 1000)
    better = paired_difference(a, a + 0.1, 0.1)
    assert better["ci_low"] == pytest.approx(0.1) and better["p_value"] == pytest.approx(2 / 1001)
    same = paired_difference(a, a + rng.normal(0, 0.01, 1000), 0.0)
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.5


def test_icc_matches_shrout_and_fleiss_table():
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; Table 4 gives ICC(2,1) = .29.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    icc = icc_absolute_agreement(ratings)
    assert round(icc["icc"], 2) == 0.29
    # By hand from the ANOVA of the table: BMS 11.24, JMS 32.49, EMS 1.02 (Shrout & Fleiss's Table 3).
    bms, jms, ems, n, k = 11.2417, 32.4861, 1.0194, 6, 4
    assert icc["icc"] == pytest.approx((bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n), abs=1e-4)
    assert icc["ci_low"] < icc["icc"] < icc["ci_high"]


def test_icc_interval_covers_the_true_value_at_the_nominal_rate():
    # Two-way random model x = subject + rater + error: ICC(2,1) = 1 / (1 + 0.2 + 0.5).
    rng = np.random.default_rng(2)
    true_icc = 1 / 1.7
    hits = []
    for _ in range(400):
        x = rng.normal(0, 1, (40, 1)) + rng.normal(0, np.sqrt(0.2), (1, 2)) + rng.normal(0, np.sqrt(0.5), (40, 2))
        icc = icc_absolute_agreement(x)
        hits.append(icc["ci_low"] <= true_icc <= icc["ci_high"])
    assert 0.91 < np.mean(hits) < 0.99


def test_bland_altman_by_hand():
    true = np.array([1.0, 2.0, 0.5, 2.5, 1.5])
    pred = true + np.array([0.1, 0.3, -0.1, 0.2, 0.0])  # differences: mean 0.1, SD sqrt(0.025)
    ba = bland_altman(true, pred)
    sd = np.sqrt(0.025)
    assert ba["bias"] == pytest.approx(0.1) and ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(0.1 - 1.959964 * sd) and ba["loa_high"] == pytest.approx(0.1 + 1.959964 * sd)
    t4 = 2.776445  # t quantile 0.975 with 4 degrees of freedom
    assert ba["bias_ci_high"] - ba["bias"] == pytest.approx(t4 * sd / np.sqrt(5))
    half = t4 * sd * np.sqrt(1 / 5 + 1.959964**2 / 8)
    assert ba["loa_high_ci_high"] - ba["loa_high"] == pytest.approx(half)


HAND_PROBS = np.array([
    [0.9, 0.05, 0.05, 0.0],  # target 0: confidence 0.9, right
    [0.9, 0.1, 0.0, 0.0],  # target 1: confidence 0.9, wrong
    [0.1, 0.7, 0.2, 0.0],  # target 1: confidence 0.7, right
    [0.3, 0.3, 0.4, 0.0],  # target 3: confidence 0.4, wrong
])
HAND_TARGETS = np.array([0, 1, 1, 3])


def test_ece_and_brier_by_hand():
    # Bins: [0.9, 1.0) 2 zones, accuracy 0.5, confidence 0.9; [0.7, 0.8) 1 zone, 1 vs 0.7; [0.4, 0.5) 1, 0 vs 0.4.
    # ECE = (2 * 0.4 + 0.3 + 0.4) / 4 = 0.375.
    assert expected_calibration_error(HAND_PROBS, HAND_TARGETS) == pytest.approx(0.375)
    # Squared distances to the one-hot targets: 0.015, 1.62, 0.14, 1.34.
    assert brier_score(HAND_PROBS, HAND_TARGETS) == pytest.approx(3.115 / 4)


def test_calibration_scores_known_targets_on_renormalised_known_classes():
    # The hand example as four zones of two images, half their mass on Unknown; other zones Unknown.
    probs = np.full((2, 6, 5), 0.2)
    targets = np.full((2, 6), UNKNOWN)
    for i, (p, t) in enumerate(zip(HAND_PROBS, HAND_TARGETS)):
        probs[i // 2, i % 2] = [*(0.5 * p), 0.5]
        targets[i // 2, i % 2] = t
    report = calibration_report(probs, targets, temperature=1.0)
    assert report["overall"]["zones"] == 4
    assert report["overall"]["ece_before"] == pytest.approx(0.375)
    assert report["overall"]["ece_after"] == pytest.approx(0.375)
    assert report["left_sup"]["zones"] == 2 and np.isnan(report["right_mid"]["ece_before"])


def _overconfident(rng, n):
    """Targets drawn from honest probabilities, and those probabilities sharpened by T = 1/2.5."""
    logits = rng.normal(0, 1.2, (n, 6, 5))
    honest = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    targets = (honest.cumsum(-1) < rng.random((n, 6, 1))).sum(-1)
    return apply_temperature(honest, 1 / 2.5), targets


def test_temperature_scaling_lowers_validation_nll():
    rng = np.random.default_rng(4)
    val_probs, val_targets = _overconfident(rng, 200)
    temperature = fit_temperature(val_probs, val_targets)
    assert 2.0 < temperature < 3.1
    before = calibration_report(val_probs, val_targets, temperature)["overall"]
    assert before["nll_after"] < before["nll_before"] and before["ece_after"] < before["ece_before"]
    # It carries over to held-out data of the same model, and never changes the predicted class.
    test_probs, test_targets = _overconfident(rng, 200)
    report = calibration_report(test_probs, test_targets, temperature)["overall"]
    assert report["nll_after"] < report["nll_before"] and report["brier_after"] < report["brier_before"]
    assert np.array_equal(apply_temperature(test_probs, temperature).argmax(-1), test_probs.argmax(-1))
    known = test_targets != UNKNOWN
    flat = test_probs[known][:, :UNKNOWN] / test_probs[known][:, :UNKNOWN].sum(-1, keepdims=True)
    assert negative_log_likelihood(flat, test_targets[known]) == pytest.approx(report["nll_before"])
