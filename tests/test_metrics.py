"""Metrics: a hand-worked example, agreement with scikit-learn/scipy on random data, edge cases."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, precision_score, recall_score

from src.data.zones import UNKNOWN, ZONES
from src.engine.metrics import (
    AHF_CLASSES,
    METRIC_NAMES,
    VALIDATION_METRICS,
    ahf_class,
    ahf_confusion_matrix,
    classification_from_confusion,
    compute_ahf_classification_metrics,
    compute_all_metrics,
    compute_csi_average_metrics,
    compute_f1_metrics,
    compute_precision_recall,
    compute_qwk,
    compute_unknown_metrics,
    confusion_matrices,
    expected_csi,
    expected_scores,
)
from src.engine.settings import LoopSettings
from src.training.loop import validate_epoch
from src.training.loss import WeightedCSILoss

AHF = {"ahf_low": 1.3, "ahf_high": 2.2}  # the shipped [Evaluation] thresholds

# Zones: right_sup, left_sup, right_mid, left_mid, right_inf, left_inf.
HAND_TRUE = np.array([
    [0, 0, 1, 1, 4, 4],  # CSI 2/4 = 0.5
    [3, 3, 2, 2, 1, 4],  # CSI 11/5 = 2.2, exactly the high threshold
    [2, 2, 3, 3, 4, 4],  # CSI 10/4 = 2.5
])
HAND_PRED = np.array([
    [0, 0, 1, 2, 4, 0],  # CSI 3/5 = 0.6
    [3, 3, 2, 2, 1, 4],  # CSI 2.2
    [2, 4, 3, 3, 3, 4],  # CSI 11/4 = 2.75
])


def test_hand_example_classification():
    # Known targets: 13 zones; wrong are A left_mid (1->2) and C left_sup (2->Unknown).
    #   class 0: TP 2, FP 0, FN 0           -> F1 1
    #   class 1: TP 2, FP 0, FN 1           -> P 1,   R 2/3 -> F1 0.8
    #   class 2: TP 3, FP 1 (A), FN 1 (C)   -> P 3/4, R 3/4 -> F1 0.75
    #   class 3: TP 4, FP 0, FN 0           -> F1 1
    #   macro F1 = 3.55 / 4 = 71/80 = 0.8875; accuracy 11/13.
    # Counting Unknown as a fifth class over all 18 zones, as the legacy code did: class 4 has
    # TP 3, FP 1, FN 2 -> F1 2/3, and the Unknown targets predicted 0 and 3 add false positives:
    # class 0 F1 0.8, class 3 F1 8/9; macro = (0.8 + 0.8 + 0.75 + 8/9 + 2/3) / 5 = 703/900 = 0.781.
    f1 = compute_f1_metrics(HAND_TRUE, HAND_PRED)
    assert f1["f1_macro"] == pytest.approx(71 / 80)
    legacy = f1_score(HAND_TRUE.ravel(), HAND_PRED.ravel(), average="macro")
    assert legacy == pytest.approx(703 / 900)
    # left_sup known targets 0, 3, 2 predicted 0, 3, Unknown: classes 0 and 3 F1 1, class 2 F1 0.
    assert f1["f1_macro_left_sup"] == pytest.approx(2 / 3)

    pr = compute_precision_recall(HAND_TRUE, HAND_PRED)
    assert pr["accuracy"] == pytest.approx(11 / 13)
    assert pr["recall_macro"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 1) / 4)
    assert pr["precision_macro"] == pytest.approx((1 + 1 + 3 / 4 + 1) / 4)
    assert np.isnan(pr["accuracy_left_inf"])  # no known target in left_inf

    # Kappa over the 12 zones with both sides known: one disagreement (1 vs 2) of weight 1.
    # Target counts per class (2, 3, 3, 4), predicted (2, 2, 4, 4); the chance-expected weighted
    # disagreement is sum_ij (i-j)^2 t_i p_j / 12 = (2*54 + 3*22 + 3*14 + 4*30) / 12 = 28.
    assert compute_qwk(HAND_TRUE, HAND_PRED)["qwk"] == pytest.approx(1 - 1 / 28)

    # 1 of 13 known targets predicted Unknown; 3 of 5 Unknown targets predicted Unknown.
    unknown = compute_unknown_metrics(HAND_TRUE, HAND_PRED)
    assert unknown == pytest.approx({"unknown_pred_rate": 1 / 13, "unknown_recall": 3 / 5})


def test_hand_example_csi_and_ahf():
    # CSI errors 0.1, 0, 0.25.
    csi = compute_csi_average_metrics(HAND_TRUE, HAND_PRED)
    assert csi["csi_mae"] == pytest.approx(0.35 / 3)
    assert csi["csi_rmse"] == pytest.approx(np.sqrt((0.01 + 0.0625) / 3))
    assert csi["csi_n_undefined_pred"] == 0

    # Thresholds are inclusive: exactly 1.3 is low, exactly 2.2 is medium.
    assert ahf_class(np.array([0.0, 1.3, 1.31, 2.2, 2.21, 3.0]), 1.3, 2.2).tolist() == [0, 0, 1, 1, 2, 2]
    # True 0.5 low, 2.2 medium, 2.5 high; predicted 0.6 low, 2.2 medium, 2.75 high.
    assert compute_ahf_classification_metrics(HAND_TRUE, HAND_PRED, 1.3, 2.2) == {"ahf_accuracy": 1.0,
                                                                                  "ahf_f1_macro": 1.0}
    # With low=0.5 the first target (0.5) stays low but its prediction (0.6) becomes medium:
    # F1 low 0, medium 2/3, high 1.
    metrics = compute_ahf_classification_metrics(HAND_TRUE, HAND_PRED, low=0.5, high=2.2)
    assert metrics == pytest.approx({"ahf_accuracy": 2 / 3, "ahf_f1_macro": 5 / 9})
    matrix = ahf_confusion_matrix(HAND_TRUE, HAND_PRED, low=0.5, high=2.2)
    assert matrix.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert matrix.shape == (len(AHF_CLASSES),) * 2


def _random(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Targets with ~10% Unknown and noisy predictions of them with ~5% Unknown."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, (n, len(ZONES)))
    y_pred = np.clip(y_true + rng.integers(-1, 2, y_true.shape), 0, 3)
    y_true[rng.random(y_true.shape) < 0.1] = UNKNOWN
    y_pred[rng.random(y_pred.shape) < 0.05] = UNKNOWN
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn_on_known_targets(seed):
    y_true, y_pred = _random(seed)
    f1 = compute_f1_metrics(y_true, y_pred)
    pr = compute_precision_recall(y_true, y_pred)
    qwk = compute_qwk(y_true, y_pred)
    scopes = [("", y_true.ravel(), y_pred.ravel())]
    scopes += [(f"_{zone}", y_true[:, i], y_pred[:, i]) for i, zone in enumerate(ZONES)]
    for suffix, t, p in scopes:
        known = t != UNKNOWN
        t, p = t[known], p[known]
        assert set(t) == {0, 1, 2, 3}  # every class present, so the present-class labels are [0, 1, 2, 3]
        kw = {"labels": [0, 1, 2, 3], "average": "macro", "zero_division": 0}
        assert f1[f"f1_macro{suffix}"] == pytest.approx(f1_score(t, p, **kw))
        assert pr[f"precision_macro{suffix}"] == pytest.approx(precision_score(t, p, **kw))
        assert pr[f"recall_macro{suffix}"] == pytest.approx(recall_score(t, p, **kw))
        assert pr[f"accuracy{suffix}"] == pytest.approx(np.mean(t == p))
        both = p != UNKNOWN
        assert qwk[f"qwk{suffix}"] == pytest.approx(cohen_kappa_score(t[both], p[both], weights="quadratic"))
    known = y_true.ravel() != UNKNOWN
    expected = f1_score(y_true.ravel()[known], y_pred.ravel()[known], labels=[0, 1, 2, 3], average="weighted")
    assert f1["f1_weighted"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_csi_and_unknown_rates_match_direct_computation(seed):
    y_true, y_pred = _random(seed)
    # CSI written independently of csi_from_scores: mean of the non-Unknown entries.
    true = np.nanmean(np.where(y_true == UNKNOWN, np.nan, y_true), axis=1)
    pred = np.nanmean(np.where(y_pred == UNKNOWN, np.nan, y_pred), axis=1)
    csi = compute_csi_average_metrics(y_true, y_pred)
    assert csi["csi_pearson"] == pytest.approx(pearsonr(true, pred).statistic)
    assert csi["csi_mae"] == pytest.approx(np.mean(np.abs(true - pred)))
    assert csi["csi_rmse"] == pytest.approx(np.sqrt(np.mean((true - pred) ** 2)))

    unknown = compute_unknown_metrics(y_true, y_pred)
    assert unknown["unknown_pred_rate"] == pytest.approx(np.mean(y_pred[y_true != UNKNOWN] == UNKNOWN))
    assert unknown["unknown_recall"] == pytest.approx(np.mean(y_pred[y_true == UNKNOWN] == UNKNOWN))


def test_confusion_matrices_match_sklearn():
    y_true, y_pred = _random(3, n=50)
    matrices = confusion_matrices(y_true, y_pred)
    assert set(matrices) == {"overall", *ZONES}
    labels = [0, 1, 2, 3, 4]
    assert (matrices["overall"] == confusion_matrix(y_true.ravel(), y_pred.ravel(), labels=labels)).all()
    for i, zone in enumerate(ZONES):
        assert (matrices[zone] == confusion_matrix(y_true[:, i], y_pred[:, i], labels=labels)).all()


def test_perfect_prediction_scores_perfectly_despite_unknown_targets():
    # Regression test for the legacy cap: counting Unknown as a class held macro F1 at 0.8.
    y_true, _ = _random(4)
    assert 0.05 < np.mean(y_true == UNKNOWN) < 0.15
    metrics = compute_all_metrics(y_true, y_true.copy(), **AHF)
    for key in ["f1_macro", "f1_weighted", "qwk", "accuracy", "precision_macro", "recall_macro", "ahf_accuracy"]:
        assert metrics[key] == 1.0, key
    assert all(metrics[f"f1_macro_{zone}"] == 1.0 for zone in ZONES)
    assert metrics["csi_mae"] == 0.0
    assert metrics["unknown_pred_rate"] == 0.0
    assert metrics["unknown_recall"] == 1.0


def test_class_absent_from_a_zone_does_not_cap_its_macro_f1():
    # No Severe (3) target or prediction in any zone: averaging over [0, 1, 2, 3] would give 0.75.
    y_true = np.array([[0, 1, 2, 0, 1, 2], [2, 1, 0, 2, 1, 0], [1, 1, 1, 4, 4, 4]])
    metrics = compute_f1_metrics(y_true, y_true)
    assert all(value == 1.0 for value in metrics.values())
    # A wrongly predicted absent class does count: left_inf targets 2, 0 predicted 3, 0.
    y_pred = y_true.copy()
    y_pred[0, 5] = 3
    # left_inf: class 0 F1 1, class 2 F1 0 (missed), class 3 F1 0 (false alarm) -> 1/3.
    assert compute_f1_metrics(y_true, y_pred)["f1_macro_left_inf"] == pytest.approx(1 / 3)


def test_expected_scores_and_csi():
    probs = np.zeros((1, 6, 5))
    probs[0, 0] = [0, 0, 0, 1, 0]  # certainly Severe: 3, known mass 1
    probs[0, 1] = [0.3, 0, 0.2, 0, 0.5]  # renormalised 0.6 / 0.4 on 0 / 2: 0.8, known mass 0.5
    probs[0, 2:, UNKNOWN] = 1  # certainly Unknown: no expectation, no weight
    scores = expected_scores(probs)
    assert scores[0, :2] == pytest.approx([3.0, 0.8])
    assert np.isnan(scores[0, 2:]).all()
    # Weighted by known mass: (3 * 1 + 0.8 * 0.5) / 1.5.
    assert expected_csi(probs) == pytest.approx([3.4 / 1.5])


def test_csi_drops_undefined_targets_and_falls_back_on_probabilities():
    y_true = np.array([[1] * 6, [4] * 6, [3] * 6])
    y_pred = np.array([[1] * 6, [0] * 6, [4] * 6])
    # Image 2 has no true CSI; image 3 has no predicted CSI and is left out without probs.
    csi = compute_csi_average_metrics(y_true, y_pred)
    assert csi["csi_n_undefined_pred"] == 1
    assert csi["csi_mae"] == 0.0
    assert np.isnan(csi["csi_pearson"])  # one image left: correlation undefined

    probs = np.zeros((3, 6, 5))
    probs[0, :, 1] = 1  # expected CSI 1
    probs[1, :, 0] = 1
    probs[2, :, 2] = 0.4  # expected CSI 2, predicted Unknown by argmax
    probs[2, :, UNKNOWN] = 0.6
    csi = compute_csi_average_metrics(y_true, y_pred, probs)
    # Image 3 now predicted 2 against 3: errors 0 and 1.
    assert csi["csi_n_undefined_pred"] == 0
    assert csi["csi_mae"] == pytest.approx(0.5)
    assert csi["csi_mae_expected"] == pytest.approx(0.5)
    assert csi["csi_pearson"] == pytest.approx(1.0)


def test_no_known_target_gives_nan_not_an_error():
    y_true = np.full((4, 6), UNKNOWN)
    y_pred = np.array([[0, 1, 2, 3, 4, 4]] * 4)
    metrics = compute_all_metrics(y_true, y_pred, probs=np.full((4, 6, 5), 0.2), **AHF)
    assert all(type(value) is float for value in metrics.values())
    json.dumps(metrics)
    assert metrics["unknown_recall"] == pytest.approx(2 / 6)  # two of the six zones predicted Unknown
    defined = {"unknown_recall", "csi_n_undefined_pred"}
    assert all(np.isnan(value) for key, value in metrics.items() if key not in defined)
    assert confusion_matrices(y_true, y_pred)["overall"][UNKNOWN].sum() == 24
    assert ahf_confusion_matrix(y_true, y_pred, 1.3, 2.2).sum() == 0


def test_rejects_malformed_input():
    good = np.zeros((2, 6), dtype=int)
    with pytest.raises(ValueError, match="shape"):
        compute_all_metrics(good, np.zeros((2, 5), dtype=int), **AHF)
    with pytest.raises(ValueError, match="0-4"):
        compute_all_metrics(good, good + 5, **AHF)
    with pytest.raises(ValueError, match="probs"):
        compute_all_metrics(good, good, probs=np.zeros((2, 6, 4)), **AHF)
    with pytest.raises(ValueError, match="NaN"):
        ahf_class(np.array([np.nan]), 1.3, 2.2)


def test_weights_count_each_image_as_often_as_repeating_it():
    # The bootstrap scores resamples through weights: image i with weight k must count as k copies.
    y_true, y_pred = _random(5, n=40)
    probs = np.random.default_rng(5).dirichlet(np.ones(5), (40, 6))
    counts = np.random.default_rng(6).multinomial(40, np.ones(40) / 40, size=3)
    weighted = compute_all_metrics(y_true, y_pred, probs, weights=counts, **AHF)
    for b, row in enumerate(counts):
        copies = np.repeat(np.arange(40), row)
        expected = compute_all_metrics(y_true[copies], y_pred[copies], probs[copies], **AHF)
        for key, value in expected.items():
            assert weighted[key][b] == pytest.approx(value, nan_ok=True), key


def test_published_names_are_what_an_epoch_reports():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, (20, 6)), rng.integers(0, 5, (20, 6))
    probs = rng.dirichlet(np.ones(5), (20, 6))
    assert sorted(compute_all_metrics(y_true, y_pred, probs, **AHF)) == sorted(METRIC_NAMES)
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 30), torch.nn.Unflatten(1, (6, 5)))
    batches = [(torch.randn(5, 1, 2, 2), torch.from_numpy(y_true[i * 5:(i + 1) * 5]), [str(i)] * 5)
               for i in range(4)]
    reported = validate_epoch(model, batches, WeightedCSILoss(), torch.device("cpu"), 1, LoopSettings(progress=False))
    assert sorted(reported) == sorted({"epoch", "val_images", *VALIDATION_METRICS})


def test_classification_from_summed_confusion_counts_matches_the_label_arrays():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 5, (40, 6)), rng.integers(0, 5, (40, 6))
    counts = np.zeros(25, dtype=int)
    for batch in range(0, 40, 8):  # summed batch by batch, as train_epoch does
        counts += np.bincount((y_true[batch:batch + 8] * 5 + y_pred[batch:batch + 8]).ravel(), minlength=25)
    from_counts = classification_from_confusion(counts.reshape(5, 5))
    expected = compute_all_metrics(y_true, y_pred, **AHF)
    for name in ("f1_macro", "f1_weighted", "precision_macro", "recall_macro", "accuracy"):
        assert from_counts[name] == pytest.approx(expected[name])
