"""eval and both modes: evaluate a trained run (or an ensemble of checkpoints) and print a compact table."""

from __future__ import annotations

from typing import Any

import click

from src.cli.train import run_train
from src.config.schema import Config
from src.evaluation.ensemble import ensemble_average, ensemble_checkpoints, ensemble_dir, evaluate_ensemble
from src.evaluation.evaluate import evaluate_run, metrics_table
from src.evaluation.report import EvaluationRun

SHOWN = ("f1_macro", "f1_weighted", "accuracy", "qwk", "precision_macro", "recall_macro", "csi_mae",
         "csi_rmse", "csi_pearson", "ahf_accuracy", "ahf_f1_macro", "unknown_pred_rate", "unknown_recall")


def run_eval(cfg: Config, options: dict[str, Any]) -> dict:
    """One checkpoint: metrics per split with their CIs, agreement and calibration. Several (--checkpoint
    repeated, --run of a cross-validation): per split, each member's metrics beside the ensemble's.
    --labels: the checkpoint (or ensemble) on an external set beside its internal test split."""
    runs = options.get("runs", ())
    members = ensemble_checkpoints(cfg, runs, options.get("checkpoints", ()))
    if options.get("labels"):
        from src.evaluation.external import evaluate_external  # the mode's other paths need none of it

        out_root = members[0].parent / "evaluation" if len(members) == 1 else ensemble_dir(cfg, runs, members)
        evaluation = evaluate_external(cfg, members, options["labels"], options.get("name"),
                                       bool(options.get("allow_overlap")), out_root)
        intervals = {split: a.intervals for split, a in evaluation.analyses.items()}
        click.echo(metrics_table(evaluation.metrics, SHOWN, intervals).to_string())
        click.echo(statistics_lines(evaluation))
        return evaluation.metrics
    if len(members) == 1:
        evaluation = evaluate_run(cfg, checkpoint=str(members[0]))
        intervals = {split: a.intervals for split, a in evaluation.analyses.items()}
        click.echo(metrics_table(evaluation.metrics, SHOWN, intervals).to_string())
        click.echo(statistics_lines(evaluation))
        return evaluation.metrics
    evaluation = evaluate_ensemble(cfg, members, ensemble_dir(cfg, runs, members))
    tta = cfg.evaluation.tta
    calibrated = ", members calibrated" if cfg.evaluation.calibrate else ""
    for split, by_member in evaluation.metrics.items():
        click.echo(f"\n{split} split: {len(members)} members and their {ensemble_average(cfg)} "
                   f"ensemble{'' if tta == 'none' else f' (tta {tta})'}{calibrated}; 95% bootstrap CIs")
        click.echo(metrics_table(by_member, SHOWN, evaluation.intervals[split]).to_string())
    click.echo(f"\nEnsemble evaluation written to {evaluation.out_dir}")
    return evaluation.metrics


def statistics_lines(evaluation: EvaluationRun) -> str:
    """Agreement and calibration of each split, one line each, below the metrics table."""
    lines = []
    temperature = (evaluation.calibration or {}).get("temperature")
    for split, a in evaluation.analyses.items():
        ba, icc, cal = a.bland_altman, a.icc, a.calibration["overall"]
        lines.append(f"{split}: 95% CIs by {a.n_units} {a.units}; CSI ICC(2,1) {icc['icc']:.3f} "
                     f"[{icc['ci_low']:.3f}, {icc['ci_high']:.3f}], Bland-Altman bias {ba['bias']:+.3f} "
                     f"[{ba['bias_ci_low']:+.3f}, {ba['bias_ci_high']:+.3f}], limits {ba['loa_low']:+.3f} .. "
                     f"{ba['loa_high']:+.3f}")
        if temperature is not None:
            lines.append(f"{split}: calibration ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, Brier "
                         f"{cal['brier_before']:.3f} -> {cal['brier_after']:.3f} at T = {temperature:.3f} "
                         "(fitted on val)")
    lines += study_lines(evaluation)
    lines.append(f"figures, metrics.json and report.html: {evaluation.out_dir}")
    return "\n".join(lines)


def study_lines(evaluation: EvaluationRun) -> list[str]:
    """The site comparison, reader study and outcome analysis, a few lines each, where eval made them."""
    lines = []
    site, readers, outcome = evaluation.site, evaluation.readers, evaluation.outcome
    if site is not None and not site.differences.empty:
        for row in site.differences[site.differences["metric"].isin(("f1_macro", "qwk", "csi_mae"))].itertuples():
            lines.append(f"{site.external} - {site.internal}: {row.metric} {row.difference:+.3f} "
                         f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}] (unpaired bootstrap, p {row.p_value:.3f})")
    if site is not None:
        lines += site.notes
    if readers is not None:
        for metric, row in readers.range.iterrows():
            lines.append(f"{evaluation.studied} readers: {metric} {row.readers_min:.3f}..{row.readers_max:.3f}, model "
                         f"{row.model_mean:.3f} ({row.position}; better than the reader left out on "
                         f"{row.model_better_than_left_out} references)")
    if outcome is not None:
        for scorer, row in outcome.auroc.iterrows():
            lines.append(f"{evaluation.studied} {outcome.column}: AUROC of {scorer}'s CSI {row.auroc:.3f} "
                         f"[{row.ci_low:.3f}, {row.ci_high:.3f}] ({int(row.positives)} of {int(row.images)} positive)")
    return lines


def run_both(cfg: Config, options: dict[str, Any]) -> dict:
    result = run_train(cfg, options)
    return run_eval(cfg, {**options, "runs": (str(result.run_dir),), "checkpoints": ()})
