"""Does the model hold at another hospital? The external set's headline metrics beside the internal
test split's, each difference with an unpaired bootstrap CI, and calibration at both sites.

The two sites hold different patients, so nothing pairs them: each site is resampled on its own
(its patients where known, else its images; the seeds differ by one so that two sites of the same
size do not draw the same indices), replicate b of the difference is external_b - internal_b, and
its percentile interval and p come from `paired_difference` applied to these independent
replicates (the same arithmetic, without the pairing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from src.engine.metrics import HEADLINE_METRICS, compute_all_metrics
from src.engine.predict import Predictions
from src.evaluation.bootstrap import BootstrapSettings, paired_difference, resample_weights


@dataclass
class SiteComparison:
    internal: str  # the internal split's name ("test")
    external: str  # the external set's name
    differences: pd.DataFrame  # metric, internal, external, difference (external - internal), ci_low, ci_high, p_value
    calibration: pd.DataFrame  # site -> zones, ECE and Brier before and after the temperature
    temperature: float | None  # the stored temperature both sites were scaled with (None: none applies)
    notes: list[str]  # how the overlap was checked, what could not be compared

    def to_json(self) -> dict:
        return {"internal": self.internal, "external": self.external, "temperature": self.temperature,
                "differences": self.differences.to_dict("records"),
                "calibration": self.calibration.reset_index().to_dict("records"), "notes": self.notes}


def _replicates(pred: Predictions, units: Sequence[str], bootstrap: BootstrapSettings, ahf: tuple[float, float]
                ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    y_pred = pred.probs.argmax(-1)
    observed = compute_all_metrics(pred.targets, y_pred, pred.probs, ahf_low=ahf[0], ahf_high=ahf[1])
    replicates = compute_all_metrics(pred.targets, y_pred, pred.probs, ahf_low=ahf[0], ahf_high=ahf[1],
                                     weights=resample_weights(units, bootstrap))
    return observed, replicates


def site_differences(internal: Predictions, internal_units: Sequence[str], external: Predictions,
                     external_units: Sequence[str], bootstrap: BootstrapSettings, ahf: tuple[float, float]
                     ) -> pd.DataFrame:
    """Each headline metric at both sites and external - internal with its unpaired bootstrap CI and p."""
    inside, inside_reps = _replicates(internal, internal_units, bootstrap, ahf)
    outside, outside_reps = _replicates(external, external_units, replace(bootstrap, seed=bootstrap.seed + 1), ahf)
    return pd.DataFrame([{"metric": name, "internal": inside[name], "external": outside[name],
                          **paired_difference(inside_reps[name], outside_reps[name], outside[name] - inside[name],
                                              bootstrap.level)} for name in HEADLINE_METRICS])


def calibration_table(calibrations: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """Site -> zones scored, ECE and Brier before and after the temperature (each site's overall row)."""
    columns = ["zones", "ece_before", "ece_after", "brier_before", "brier_after"]
    return pd.DataFrame({site: {c: report["overall"][c] for c in columns} for site, report in calibrations.items()}
                        ).T.rename_axis("site")
