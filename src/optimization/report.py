"""What a study leaves behind: the live line per trial, best_params.json, trials.csv, plots, a summary."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from src.config.schema import Config
from src.optimization.study import study_dir
from src.utils.io import atomic_write_csv, atomic_write_text

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
_SUMMARY_ROWS = 10


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state for t in trials)
    return {"n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
            "n_failed": counts[TrialState.FAIL]}


def _best(study: optuna.Study, trials: list[FrozenTrial]) -> FrozenTrial | None:
    return study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None


def describe_trial(study: optuna.Study, trial: FrozenTrial) -> str:
    """One line on a finished trial: number, outcome, value, best so far, counts, params."""
    trials = study.get_trials(deepcopy=False)
    if trial.state == TrialState.COMPLETE:
        outcome = f"value {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        epoch = max(trial.intermediate_values)
        outcome = f"pruned after epoch {epoch} ({trial.intermediate_values[epoch]:.4f})"
    else:
        outcome = trial.state.name.lower() + (f": {trial.user_attrs['fail_reason']}"
                                              if "fail_reason" in trial.user_attrs else "")
    best = _best(study, trials)
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no trial complete yet"
    counts = _counts(trials)
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    return (f"trial {trial.number} {outcome} | {best_text} | {counts['n_complete']} complete, "
            f"{counts['n_pruned']} pruned, {counts['n_failed']} failed | {params}")


def best_params(study: optuna.Study) -> dict | None:
    """The content of best_params.json, or None while no trial has completed."""
    trials = study.get_trials(deepcopy=False)
    best = _best(study, trials)
    if best is None:
        return None
    return {"study_name": study.study_name, "metric": study.user_attrs.get("metric"),
            "direction": study.direction.name.lower(), "best_value": best.value, "best_trial": best.number,
            "best_params": best.params, **_counts(trials)}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: outcome, epochs reached, every searched value and where its run went."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "epochs": len(t.intermediate_values),
                     "duration_s": t.duration.total_seconds() if t.duration else None,
                     "start": t.datetime_start, **t.params, **t.user_attrs,
                     "retry_of": RetryHeartbeatStaleTrialCallback.retried_trial_number(t)})
    return pd.DataFrame(rows)


def write_plots(study: optuna.Study, metric: str, out: Path) -> None:
    # Imported here: matplotlib and plotly cost seconds, which every sweep run's fresh process would pay.
    from optuna import visualization
    from optuna.visualization import matplotlib as mpl_visualization
    from plotly.offline import get_plotlyjs

    from src.evaluation.plots import save_figure

    with warnings.catch_warnings():  # experimental-API and too-few-trials notices
        warnings.simplefilter("ignore")
        for name in PLOTS:
            plot = getattr(visualization, f"plot_{name}")(study, target_name=metric)
            atomic_write_text(out / f"{name}.html", plot.to_html(include_plotlyjs="directory"))
            axes = getattr(mpl_visualization, f"plot_{name}")(study, target_name=metric)
            save_figure(axes.figure, out / f"{name}.png")
    if not (out / "plotly.min.js").is_file():  # one offline copy that the HTML plots share
        atomic_write_text(out / "plotly.min.js", get_plotlyjs())


def write_report(study: optuna.Study, cfg: Config) -> Path:
    """Write best_params.json (once a trial has completed), trials.csv and the plots; returns their folder."""
    out = study_dir(cfg)
    table = trials_table(study)
    atomic_write_csv(out / "trials.csv", table)
    payload = best_params(study)
    if payload is not None:
        atomic_write_text(out / "best_params.json", json.dumps(payload, indent=2) + "\n")
        write_plots(study, cfg.hyperopt.metric, out)
    return out


def summary(study: optuna.Study, cfg: Config) -> str:
    """The final table: counts, best value, and the best trials with their values."""
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    best = _best(study, trials)
    head = (f"Study {study.study_name}: {len(trials)} trials ({counts['n_complete']} complete, "
            f"{counts['n_pruned']} pruned, {counts['n_failed']} failed)")
    if best is None:
        return head + "\nNo trial has completed yet."
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: t.value, reverse=cfg.hyperopt.direction == "maximize")
    shown = complete[:_SUMMARY_ROWS]
    table = pd.DataFrame({f"trial {t.number}": {cfg.hyperopt.metric: _fmt(t.value), **{k: _fmt(v) for k, v in
                                                t.params.items()}} for t in shown}).fillna("")
    return (f"{head}\nBest {cfg.hyperopt.metric} {best.value:.4f} in trial {best.number}; "
            f"complete trials, best first:\n{table.to_string()}")
