"""The project's vocabulary, which the configuration is checked against: the six zones, their
scores, and the metric names a validation epoch reports.

Declared here, at the bottom of the import graph, so that the config validates `[Callbacks] monitor`
or `[Hyperopt] metric` without importing what computes the metrics (src/engine/metrics.py, which
returns exactly METRIC_NAMES); src/data/zones.py adds what is done with zones."""

from __future__ import annotations

ZONES = ("right_sup", "left_sup", "right_mid", "left_mid", "right_inf", "left_inf")
CLASS_NAMES = ("Normal", "Mild", "Moderate", "Severe", "Unknown")
UNKNOWN = 4
KNOWN_CLASSES = (0, 1, 2, 3)
AHF_CLASSES = ("low", "medium", "high")

_PER_ZONE = ("f1_macro", "precision_macro", "recall_macro", "accuracy", "qwk")  # pooled and `_<zone>`
CSI_METRICS = ("csi_mae", "csi_rmse", "csi_pearson")  # and `_expected` when probabilities are given
# Every key compute_all_metrics returns (given probs): the one published list of metric names.
METRIC_NAMES: tuple[str, ...] = (
    *(f"{name}{suffix}" for name in _PER_ZONE for suffix in ("", *(f"_{zone}" for zone in ZONES))),
    "f1_weighted", "unknown_pred_rate", "unknown_recall", "csi_n_undefined_pred",
    *CSI_METRICS, *(f"{name}_expected" for name in CSI_METRICS), "ahf_accuracy", "ahf_f1_macro",
)
# What a validation epoch reports (validation_history.json, minus `epoch` and the `val_images` count):
# the names [Callbacks] monitor and [Hyperopt] metric may take.
VALIDATION_METRICS: tuple[str, ...] = ("val_loss", *(f"val_{name}" for name in METRIC_NAMES))
# What a paper reports, with confidence intervals: pooled, then macro F1, accuracy and QWK of each zone.
HEADLINE_METRICS: tuple[str, ...] = (
    "f1_macro", "accuracy", "qwk", *CSI_METRICS, "ahf_accuracy", "ahf_f1_macro",
    *(f"{name}_{zone}" for zone in ZONES for name in ("f1_macro", "accuracy", "qwk")),
)
