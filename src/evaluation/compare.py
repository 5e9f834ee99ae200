"""compare: two runs on the same test images, metric by metric and zone by zone.

Invariants:
- Both runs must have been tested on the same images with the same labels; anything else is
  refused, since a difference between runs on different images mixes model and data.
- Differences are B - A, from a paired bootstrap: each replicate draws the same patients (or
  images) for both runs, so the image-to-image variation common to both cancels.
- McNemar's exact test counts the known-target zones that exactly one of the two runs scores
  right. The pooled test treats the zones of one image as independent, which they are not;
  the per-zone tests do not need that assumption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from src.data.load import read_split_csv
from src.data.zones import UNKNOWN, ZONES
from src.engine.metrics import HEADLINE_METRICS, compute_all_metrics
from src.evaluation.bootstrap import BootstrapSettings, paired_difference, resample_weights, resampling_units
from src.evaluation.predictions import read_predictions_table
from src.evaluation.stat_plots import plot_differences
from src.reporting.html import Image, KeyValues, Report, Table, Text
from src.utils.errors import CSIError
from src.utils.io import atomic_write_csv, atomic_write_text


@dataclass
class RunPredictions:
    run: Path
    file_ids: list[str]
    targets: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray


@dataclass
class Comparison:
    a: Path
    b: Path
    units: str  # what was resampled, e.g. "45 patients"
    differences: pd.DataFrame  # metric, A, B, difference (B - A), ci_low, ci_high, p_value
    mcnemar: pd.DataFrame  # scope, zones, A right, B right, only A right, only B right, p_value


def tested_file_ids(run: Path) -> set[str]:
    split = read_split_csv(run / "split.csv")
    return set(split.index[split == "test"])


def check_same_split(a: Path, b: Path) -> None:
    """Refuse runs whose test splits differ, in one line naming both."""
    only_a, only_b = tested_file_ids(a) - tested_file_ids(b), tested_file_ids(b) - tested_file_ids(a)
    if only_a or only_b:
        raise CSIError(f"{a} and {b} were tested on different images ({len(only_a)} test FileIDs only in A, "
                       f"{len(only_b)} only in B): compare needs runs trained on the same split")


def read_run_predictions(run: Path) -> RunPredictions:
    path = run / "evaluation" / "predictions_test.csv"
    if not path.is_file():
        raise CSIError(f"{path}: not found; evaluate the run first (python main.py --mode eval --run {run})")
    return RunPredictions(run, *read_predictions_table(path))


def _aligned(a: RunPredictions, b: RunPredictions) -> RunPredictions:
    """`b`'s predictions in `a`'s image order; refuses different images or labels."""
    if set(a.file_ids) != set(b.file_ids):
        raise CSIError(f"{a.run} and {b.run}: their evaluations scored different test images; evaluate both "
                       "again (python main.py --mode eval --run DIR)")
    order = pd.Series(range(len(b.file_ids)), index=b.file_ids)[a.file_ids].to_numpy()
    b = RunPredictions(b.run, a.file_ids, b.targets[order], b.y_pred[order], b.probs[order])
    differing = int(np.sum(np.any(a.targets != b.targets, axis=1)))
    if differing:
        raise CSIError(f"{a.run} and {b.run}: the labels of {differing} test image(s) differ; compare needs the "
                       "same labels CSV")
    return b


def _patients(run: Path, file_ids: list[str]) -> list[str] | None:
    split = pd.read_csv(run / "split.csv", dtype=str, keep_default_na=False)
    if "PatientID" not in split:
        return None
    return split.set_index("FileID")["PatientID"][file_ids].tolist()


def paired_differences(a: RunPredictions, b: RunPredictions, units: np.ndarray, settings: BootstrapSettings,
                       ahf: tuple[float, float]) -> pd.DataFrame:
    """Each headline metric of A and B, the difference B - A with its bootstrap interval and p-value."""
    weights = resample_weights(units, settings)
    observed = [compute_all_metrics(r.targets, r.y_pred, r.probs, ahf_low=ahf[0], ahf_high=ahf[1]) for r in (a, b)]
    replicates = [compute_all_metrics(r.targets, r.y_pred, r.probs, ahf_low=ahf[0],
                                      ahf_high=ahf[1], weights=weights) for r in (a, b)]
    rows = []
    for name in HEADLINE_METRICS:
        diff = paired_difference(replicates[0][name], replicates[1][name], observed[1][name] - observed[0][name],
                                 settings.level)
        rows.append({"metric": name, "A": observed[0][name], "B": observed[1][name], **diff})
    return pd.DataFrame(rows)


def mcnemar_tests(a: RunPredictions, b: RunPredictions) -> pd.DataFrame:
    """McNemar's exact test of per-zone correctness on known targets, pooled and per zone."""
    known = a.targets != UNKNOWN
    right_a, right_b = (a.y_pred == a.targets) & known, (b.y_pred == a.targets) & known
    scopes = [("all zones", slice(None))] + [(zone, z) for z, zone in enumerate(ZONES)]
    rows = []
    for scope, z in scopes:
        n, ra, rb = int(known[:, z].sum()), right_a[:, z], right_b[:, z]
        only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        rows.append({"scope": scope, "zones": n, "A_right": int(ra.sum()), "B_right": int(rb.sum()),
                     "only_A_right": only_a, "only_B_right": only_b, "p_value": float(p)})
    return pd.DataFrame(rows)


def compare_runs(a: Path, b: Path, settings: BootstrapSettings, ahf: tuple[float, float]) -> Comparison:
    """Compare two evaluated runs on their shared test split."""
    check_same_split(a, b)
    pred_a = read_run_predictions(a)
    pred_b = _aligned(pred_a, read_run_predictions(b))
    patients = _patients(a, pred_a.file_ids)
    units = resampling_units(pred_a.file_ids, patients)
    described = f"{len(set(units))} {'images' if patients is None else 'patients'}"
    return Comparison(a, b, described, paired_differences(pred_a, pred_b, units, settings, ahf),
                      mcnemar_tests(pred_a, pred_b))


def write_comparison(comparison: Comparison, settings: BootstrapSettings, out: Path) -> list[Path]:
    """comparison.json, differences.csv, mcnemar.csv and comparison.png in `out`; returns the files."""
    document = {"A": str(comparison.a), "B": str(comparison.b), "difference": "B - A",
                "bootstrap": {"samples": settings.samples, "seed": settings.seed, "level": settings.level,
                              "resampled": comparison.units},
                "differences": comparison.differences.to_dict("records"),
                "mcnemar": comparison.mcnemar.to_dict("records")}
    files = [out / "comparison.json", out / "differences.csv", out / "mcnemar.csv", out / "comparison.png",
             out / "report.html"]
    atomic_write_text(files[0], json.dumps(document, indent=1))
    for frame, path in ((comparison.differences, files[1]), (comparison.mcnemar, files[2])):
        atomic_write_csv(path, frame)
    plot_differences(comparison.differences, f"B - A  (A = {comparison.a.name}, B = {comparison.b.name})", files[3])
    comparison_report(comparison, settings, files[3]).write(files[4])
    return files


def comparison_report(comparison: Comparison, settings: BootstrapSettings, forest_plot: Path) -> Report:
    """report.html of a comparison: the runs, the paired differences and McNemar's tests."""
    report = Report(f"Comparison: {comparison.b.name} vs {comparison.a.name}",
                    subtitle=f"paired bootstrap over {comparison.units}, {settings.samples} resamples")
    report.add_section("Runs", KeyValues({"A": str(comparison.a), "B": str(comparison.b), "difference": "B - A",
                                          "test images": "the same for both (checked from split.csv)"}))
    differences = comparison.differences.set_index("metric")
    report.add_section("Paired differences", Text(
        "Each replicate draws the same patients (or images) for both runs; intervals are 95% percentile "
        "intervals, p-values two-sided. For csi_mae and csi_rmse a negative difference means B is better.",
        muted=True), Table(differences, "B - A per metric"), Image.from_file(forest_plot))
    report.add_section("McNemar's test", Text(
        "Exact test on the known-target zones that exactly one run scores right. The 'all zones' row treats "
        "an image's zones as independent, which they are not; the per-zone rows do not.", muted=True),
        Table(comparison.mcnemar.set_index("scope"), "Per-zone correctness"))
    return report
