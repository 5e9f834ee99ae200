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
from src.optimization.report import Wording, count_states, summary_text, trial_line, write_plots
from src.sweeps.spec import SweepSpec
from src.utils.io import atomic_write_csv, atomic_write_text

VALUES_ATTR = "config"  # trial user attr: {Section.key: value} the run trained with
_STATES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "stopped (hyperband)", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "queued"}
_WORDS = Wording(search="Sweep", trial="run", complete="finished", completed="finished", pruned="stopped by hyperband")


def sweep_dir(cfg: Config, sweep_id: str) -> Path:
    """models/sweeps/<sweep>: runs.csv, best_params.json, plots, and each run's directory under runs/."""
    return Path(cfg.training.output_dir) / "sweeps" / sweep_id


def _runs(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def _best(study: optuna.Study, spec: SweepSpec) -> FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    return (max if spec.goal == "maximize" else min)(complete, key=lambda t: t.value)


def _values(trial: FrozenTrial) -> dict:
    return trial.user_attrs.get(VALUES_ATTR, {})


def describe_run(study: optuna.Study, spec: SweepSpec, trial: FrozenTrial) -> str:
    """The live line on a finished run: outcome, value, best so far, counts, values."""
    return trial_line(trial, _best(study, spec), _runs(study), _values(trial), spec.metric, _WORDS)


def runs_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    """One row per run: id, state, each parameter as Section.key, the metric, epochs, run directory."""
    rows = []
    for t in _runs(study):
        rows.append({"run": t.number, "state": _STATES.get(t.state, t.state.name.lower()),
                     **_values(t), spec.metric: t.value, "epochs": len(t.intermediate_values),
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
            **count_states(_runs(study))}


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
    complete = sorted((t for t in runs if t.state == TrialState.COMPLETE and t.value is not None),
                      key=lambda t: t.value, reverse=spec.goal == "maximize")
    return summary_text(study.study_name, runs, complete, _values, spec.metric, _WORDS)
