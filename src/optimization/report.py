"""What a study leaves behind: the live line per trial, best_params.json, trials.csv, plots, a summary.

The live line and the summary are worded per search (Wording): sweeps reuse them for their runs."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Wording:
    """What a search calls itself, its trials and their outcomes in its log lines and summary."""

    search: str = "Study"
    trial: str = "trial"
    complete: str = "complete"  # "3 complete"
    completed: str = "completed"  # "no trial has completed yet"
    pruned: str = "pruned"


_STATE_WORDS = {TrialState.FAIL: "failed", TrialState.WAITING: "queued"}


def format_value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state for t in trials)
    return {"n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
            "n_failed": counts[TrialState.FAIL]}


def _counts_text(trials: list[FrozenTrial], words: Wording) -> str:
    counts = count_states(trials)
    return f"{counts['n_complete']} {words.complete}, {counts['n_pruned']} {words.pruned}, {counts['n_failed']} failed"


def trial_line(trial: FrozenTrial, best: FrozenTrial | None, trials: list[FrozenTrial], values: dict,
               metric: str, words: Wording) -> str:
    """One line on a finished trial: number, outcome, best so far, counts of `trials`, its `values`."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"{metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        epoch = max(trial.intermediate_values)
        outcome = f"{words.pruned} after epoch {epoch} ({trial.intermediate_values[epoch]:.4f})"
    else:
        outcome = _STATE_WORDS.get(trial.state, trial.state.name.lower()) + (
            f": {trial.user_attrs['fail_reason']}" if "fail_reason" in trial.user_attrs else "")
    best_text = (f"best {best.value:.4f} ({words.trial} {best.number})" if best
                 else f"no {words.trial} has {words.completed} yet")
    shown = " ".join(f"{k}={format_value(v)}" for k, v in values.items())
    return f"{words.trial} {trial.number} {outcome} | {best_text} | {_counts_text(trials, words)} | {shown}"


def summary_text(name: str, trials: list[FrozenTrial], ranked: list[FrozenTrial], values: Callable[[FrozenTrial], dict],
                 metric: str, words: Wording) -> str:
    """The final table: counts of `trials`, the best value, and the first of the `ranked` complete
    trials (best first) with their `values(trial)`."""
    head = f"{words.search} {name}: {len(trials)} {words.trial}s ({_counts_text(trials, words)})"
    if not ranked:
        return f"{head}\nNo {words.trial} has {words.completed} yet."
    table = pd.DataFrame({f"{words.trial} {t.number}": {metric: format_value(t.value),
                                                        **{k: format_value(v) for k, v in values(t).items()}}
                          for t in ranked[:_SUMMARY_ROWS]}).fillna("")
    best = ranked[0]
    return (f"{head}\nBest {metric} {best.value:.4f} in {words.trial} {best.number}; "
            f"{words.complete} {words.trial}s, best first:\n{table.to_string()}")


def _best(study: optuna.Study, trials: list[FrozenTrial]) -> FrozenTrial | None:
    return study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None


def describe_trial(study: optuna.Study, trial: FrozenTrial) -> str:
    """The log line on a finished trial of a study."""
    trials = study.get_trials(deepcopy=False)
    return trial_line(trial, _best(study, trials), trials, trial.params, "value", Wording())


def best_params(study: optuna.Study) -> dict | None:
    """The content of best_params.json, or None while no trial has completed."""
    trials = study.get_trials(deepcopy=False)
    best = _best(study, trials)
    if best is None:
        return None
    return {"study_name": study.study_name, "metric": study.user_attrs.get("metric"),
            "direction": study.direction.name.lower(), "best_value": best.value, "best_trial": best.number,
            "best_params": best.params, **count_states(trials)}


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
    import matplotlib.pyplot as plt  # optuna's matplotlib plots are pyplot figures
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
            plt.close(axes.figure)
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
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: t.value, reverse=cfg.hyperopt.direction == "maximize")
    return summary_text(study.study_name, trials, complete, lambda t: t.params, cfg.hyperopt.metric, Wording())
