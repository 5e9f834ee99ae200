"""Agreement of predicted and true CSI: Bland-Altman limits and the intraclass correlation.

These are what radiology papers report for a continuous score, beside MAE: whether the two
measurements can be used interchangeably, not only how far apart they are on average.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from src.evaluation.bootstrap import LEVEL


def _t(level: float, df: int) -> float:
    return float(stats.t.ppf(0.5 + level / 2, df))


def bland_altman(true: np.ndarray, pred: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """Mean difference (pred - true), 95% limits of agreement and their confidence intervals.

    Limits are bias +/- 1.96 SD of the differences. Their intervals use the approximate standard
    error SD * sqrt(1/n + 1.96^2 / (2 (n - 1))) of Bland & Altman (1999), the bias's the usual t
    interval. NaN for fewer than 3 pairs.
    """
    diff = np.asarray(pred, dtype=float) - np.asarray(true, dtype=float)
    n = diff.size
    if n < 3:
        nan = float("nan")
        return dict.fromkeys(("n", "bias", "bias_ci_low", "bias_ci_high", "sd", "loa_low", "loa_high",
                              "loa_low_ci_low", "loa_low_ci_high", "loa_high_ci_low", "loa_high_ci_high"), nan) | {
            "n": float(n)}
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    z = float(stats.norm.ppf(0.975))  # limits of agreement cover 95% of differences, whatever the CI level
    t = _t(level, n - 1)
    bias_half = t * sd / np.sqrt(n)
    loa_half = t * sd * np.sqrt(1 / n + z**2 / (2 * (n - 1)))
    low, high = bias - z * sd, bias + z * sd
    return {"n": float(n), "bias": bias, "bias_ci_low": bias - bias_half, "bias_ci_high": bias + bias_half,
            "sd": sd, "loa_low": low, "loa_high": high,
            "loa_low_ci_low": low - loa_half, "loa_low_ci_high": low + loa_half,
            "loa_high_ci_low": high - loa_half, "loa_high_ci_high": high + loa_half}


def icc_absolute_agreement(ratings: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """ICC(2,1) (Shrout & Fleiss 1979; ICC(A,1) of McGraw & Wong 1996) of ratings [n subjects, k raters].

    Two-way random effects, absolute agreement, single rater. The interval is the F-based one of
    McGraw & Wong (1996, case 2A), with Satterthwaite's degrees of freedom for the rater term.
    """
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    if n < 3 or k < 2:
        return {"icc": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": float(n)}
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc = ss_rows / (n - 1), ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    icc = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    # Satterthwaite degrees of freedom of the denominator mixture (McGraw & Wong 1996, table 7).
    a = k * icc / (n * (1 - icc))
    b = 1 + k * icc * (n - 1) / (n * (1 - icc))
    v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
    tail = 0.5 + level / 2
    f_low = stats.f.ppf(tail, n - 1, v)
    f_high = stats.f.ppf(tail, v, n - 1)
    low = n * (msr - f_low * mse) / (f_low * (k * msc + (k * n - k - n) * mse) + n * msr)
    high = n * (f_high * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_high * msr)
    return {"icc": float(icc), "ci_low": float(low), "ci_high": float(high), "n": float(n)}
