"""Figures of the evaluation statistics: agreement of the CSI and reliability of the probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from src.evaluation.calibration import N_BINS, apply_temperature, known_zone_samples, reliability_bins
from src.evaluation.plots import save_figure


def plot_agreement(true: np.ndarray, pred: np.ndarray, bland_altman: dict, icc: dict, title: str,
                   path: Path) -> None:
    """Bland-Altman plot (difference against mean, bias and limits with their CIs) beside a scatter
    of predicted against true CSI with the identity line."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ba, scatter = fig.subplots(1, 2)
    mean, diff = (true + pred) / 2, pred - true
    ba.scatter(mean, diff, s=14, alpha=0.5, color="tab:blue", edgecolors="none")
    for name, colour, label in (("bias", "black", "bias"), ("loa_low", "tab:red", "limits of agreement"),
                                ("loa_high", "tab:red", None)):
        value = bland_altman[name]
        low, high = bland_altman[f"{name}_ci_low"], bland_altman[f"{name}_ci_high"]
        ba.axhspan(low, high, color=colour, alpha=0.12, lw=0)
        ba.axhline(value, color=colour, ls="-" if name == "bias" else "--", lw=1.2, label=label)
        ba.annotate(f"{value:+.2f}", (1.0, value), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, color=colour)
    ba.axhline(0, color="grey", lw=0.6)
    ba.set_xlabel("mean of true and predicted CSI")
    ba.set_ylabel("predicted - true CSI")
    ba.set_title(f"Bland-Altman (n = {int(bland_altman['n'])}; shaded: 95% CIs)", fontsize=10)
    ba.legend(fontsize=8, loc="upper left")
    ba.grid(alpha=0.3)

    scatter.scatter(true, pred, s=14, alpha=0.5, color="tab:blue", edgecolors="none")
    scatter.plot([0, 3], [0, 3], color="black", lw=1, label="identity")
    scatter.set_xlim(-0.1, 3.1)
    scatter.set_ylim(-0.1, 3.1)
    scatter.set_aspect("equal")
    scatter.set_xlabel("true CSI")
    scatter.set_ylabel("predicted CSI")
    scatter.set_title(f"ICC(2,1) {icc['icc']:.3f} [{icc['ci_low']:.3f}, {icc['ci_high']:.3f}]", fontsize=10)
    scatter.legend(fontsize=8, loc="upper left")
    scatter.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_reliability(probs: np.ndarray, targets: np.ndarray, temperature: float, report: dict, title: str,
                     path: Path) -> None:
    """Reliability diagram per scope (all zones, then each zone), before and after temperature
    scaling; bars show each bin's share of the zones."""
    scopes = list(known_zone_samples(probs, targets))
    fig = Figure(figsize=(16, 8.5), layout="constrained")
    axes = fig.subplots(2, 4, squeeze=False)
    centres = (np.arange(N_BINS) + 0.5) / N_BINS
    for ax, (scope, known, t) in zip(axes.flat, scopes):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        before = reliability_bins(known, t)
        after = reliability_bins(apply_temperature(known, temperature), t)
        share = before["count"] / max(before["count"].sum(), 1)
        ax.bar(centres, share, width=1 / N_BINS, color="lightgrey", edgecolor="white", label="share of zones")
        ax.plot(before["confidence"], before["accuracy"], "o-", color="tab:red", ms=4,
                label=f"before, ECE {report[scope]['ece_before']:.3f}")
        ax.plot(after["confidence"], after["accuracy"], "s-", color="tab:blue", ms=4,
                label=f"T = {temperature:.2f}, ECE {report[scope]['ece_after']:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{scope} ({len(t)} zones)", fontsize=10)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(scopes):]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_differences(differences: pd.DataFrame, title: str, path: Path) -> None:
    """Forest plot: each metric's paired difference with its 95% interval; p-values on the right."""
    rows = differences.iloc[::-1].reset_index(drop=True)
    fig = Figure(figsize=(8, 0.32 * len(rows) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.errorbar(rows["difference"], y, xerr=[rows["difference"] - rows["ci_low"], rows["ci_high"] - rows["difference"]],
                fmt="o", color="tab:blue", ms=4, capsize=2, lw=1)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, rows["metric"], fontsize=8)
    for i, p in enumerate(rows["p_value"]):
        ax.annotate(f"p = {p:.3f}" if p >= 0.001 else "p < 0.001", (1.0, i), xycoords=("axes fraction", "data"),
                    xytext=(6, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("difference with 95% paired-bootstrap CI (error metrics: below 0 means B is better)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def plot_roc(roc: dict[str, tuple[np.ndarray, np.ndarray]], auroc: pd.DataFrame, title: str, path: Path) -> None:
    """ROC curves of the CSI of each scorer (the model bold, readers thin), AUROC and its CI in the legend."""
    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for i, (name, (fpr, tpr)) in enumerate(roc.items()):
        row = auroc.loc[name]
        model = i == 0
        label = f"{name}: {row['auroc']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        ax.plot(fpr, tpr, lw=2.2 if model else 1.2, color="tab:blue" if model else None, ls="-" if model else "--",
                label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=8, loc="lower right", title="AUROC [95% CI]", title_fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def plot_reader_range(scores: pd.DataFrame, metrics: dict[str, tuple[str, bool]], title: str, path: Path) -> None:
    """Per metric, each reader against the consensus of the others and the model against the same
    consensus, with 95% CIs; the readers' range shaded. `scores` rows: who (a reader or 'model'),
    left_out, and per metric its value and _ci_low/_ci_high."""
    references = list(dict.fromkeys(scores["left_out"]))
    fig = Figure(figsize=(4.2 * len(metrics), 0.55 * len(references) + 1.9), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, (label, higher_better)) in zip(axes, metrics.items()):
        readers = scores[scores["who"] != "model"]
        ax.axvspan(readers[metric].min(), readers[metric].max(), color="tab:orange", alpha=0.15, lw=0,
                   label="readers' range")
        for offset, who, colour, marker in ((0.15, "reader", "tab:orange", "o"), (-0.15, "model", "tab:blue", "D")):
            rows = readers if who == "reader" else scores[scores["who"] == "model"]
            y = np.array([references.index(r) for r in rows["left_out"]]) + offset
            values = rows[metric].to_numpy(dtype=float)
            errors = np.abs(np.vstack([values - rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"] - values]))
            ax.errorbar(values, y, xerr=errors, fmt=marker, color=colour, ms=5, capsize=2, lw=1,
                        label="reader left out" if who == "reader" else "model")
        ax.set_yticks(range(len(references)), [f"without {r}" for r in references], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{label} ({'higher' if higher_better else 'lower'} is better)")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_ylabel("reference: consensus of the other readers")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    save_figure(fig, path)
