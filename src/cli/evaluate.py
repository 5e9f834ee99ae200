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
    repeated, --run of a cross-validation): per split, each member's metrics beside the ensemble's."""
    runs = options.get("runs", ())
    members = ensemble_checkpoints(cfg, runs, options.get("checkpoints", ()))
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
    lines.append(f"figures and metrics.json: {evaluation.out_dir}")
    return "\n".join(lines)


def run_both(cfg: Config, options: dict[str, Any]) -> dict:
    result = run_train(cfg, options)
    return run_eval(cfg, {**options, "runs": (str(result.run_dir),), "checkpoints": ()})
