"""What a sweep leaves in models/sweeps/<sweep>/: runs.csv, best_params.json (hyperopt's format, so
`--mode train-optimized --hyperparams` trains the winner), hyperopt's plots; the live line per run
and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from src.config.schema import Config
from src.optimization.report import write_plots
from src.sweeps.spec import SweepSpec
from src.utils.io import atomic_write_csv, atomic_write_text

VALUES_ATTR = "config"  # trial user attr: {Section.key: value} the run trained with
_SUMMARY_ROWS = 10
_STATES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "stopped (hyperband)", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "queued"}


def sweep_dir(cfg: Config, sweep_id: str) -> Path:
    """models/sweeps/<sweep>: runs.csv, best_params.json, plots, and each run's directory under runs/."""
    return Path(cfg.training.output_dir) / "sweeps" / sweep_id


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _runs(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def _best(study: optuna.Study, spec: SweepSpec) -> FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    return (max if spec.goal == "maximize" else min)(complete, key=lambda t: t.value)


def _counts(trials: list[FrozenTrial]) -> dict[str, int]:
    states = [t.state for t in trials]
    return {"n_complete": states.count(TrialState.COMPLETE), "n_pruned": states.count(TrialState.PRUNED),
            "n_failed": states.count(TrialState.FAIL)}


def describe_run(study: optuna.Study, spec: SweepSpec, trial: FrozenTrial) -> str:
    """The live line on a finished run: outcome, value, best so far, counts, values."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"{spec.metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        epoch = max(trial.intermediate_values)
        outcome = f"stopped by hyperband after epoch {epoch} ({trial.intermediate_values[epoch]:.4f})"
    else:
        outcome = _STATES.get(trial.state, trial.state.name.lower()) + (
            f": {trial.user_attrs['fail_reason']}" if "fail_reason" in trial.user_attrs else "")
    best = _best(study, spec)
    counts = _counts(_runs(study))
    values = " ".join(f"{k}={_fmt(v)}" for k, v in trial.user_attrs.get(VALUES_ATTR, {}).items())
    return (f"run {trial.number} {outcome} | " + (f"best {best.value:.4f} (run {best.number})" if best else
                                                  "no run finished yet")
            + f" | {counts['n_complete']} finished, {counts['n_pruned']} stopped, {counts['n_failed']} failed"
            + f" | {values}")


def runs_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    """One row per run: id, state, each parameter as Section.key, the metric, epochs, run directory."""
    rows = []
    for t in _runs(study):
        rows.append({"run": t.number, "state": _STATES.get(t.state, t.state.name.lower()),
                     **t.user_attrs.get(VALUES_ATTR, {}), spec.metric: t.value, "epochs": len(t.intermediate_values),
                     "run_dir": t.user_attrs.get("run_dir", ""), "fail_reason": t.user_attrs.get("fail_reason", ""),
                     "worker": t.user_attrs.get("worker", "")})
    return pd.DataFrame(rows)


def best_params(study: optuna.Study, spec: SweepSpec) -> dict | None:
    """The content of best_params.json (hyperopt's format), or None while no run has finished."""
    best = _best(study, spec)
    if best is None:
        return None
    return {"study_name": study.study_name, "metric": spec.metric, "direction": spec.direction,
            "best_value": best.value, "best_trial": best.number, "best_params": best.user_attrs[VALUES_ATTR],
            **_counts(_runs(study))}


def write_outputs(study: optuna.Study, spec: SweepSpec, out: Path, plots: bool = True) -> Path:
    """runs.csv always; best_params.json and (with `plots`) hyperopt's plots once a run has finished."""
    table = runs_table(study, spec)
    atomic_write_csv(out / "runs.csv", table)
    payload = best_params(study, spec)
    if payload is not None:
        atomic_write_text(out / "best_params.json", json.dumps(payload, indent=2) + "\n")
        if plots:
            write_plots(study, spec.metric, out)
    return out


def summary(study: optuna.Study, spec: SweepSpec) -> str:
    """The final table: counts, the best value, and the best runs with their values."""
    runs = _runs(study)
    counts = _counts(runs)
    head = (f"Sweep {study.study_name}: {len(runs)} runs ({counts['n_complete']} finished, "
            f"{counts['n_pruned']} stopped by hyperband, {counts['n_failed']} failed)")
    best = _best(study, spec)
    if best is None:
        return head + "\nNo run has finished yet."
    complete = sorted((t for t in runs if t.state == TrialState.COMPLETE and t.value is not None),
                      key=lambda t: t.value, reverse=spec.goal == "maximize")
    table = pd.DataFrame({f"run {t.number}": {spec.metric: _fmt(t.value), **{k: _fmt(v) for k, v in
                                             t.user_attrs.get(VALUES_ATTR, {}).items()}}
                          for t in complete[:_SUMMARY_ROWS]}).fillna("")
    return f"{head}\nBest {spec.metric} {best.value:.4f} in run {best.number}; finished runs, best first:\n" \
           f"{table.to_string()}"
