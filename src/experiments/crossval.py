"""K-fold cross-validation: patient-grouped folds of the non-test images, one normal run per fold.

Layout, under <[Training] output_dir>/cv/<[Training] run_name>/:
- folds.csv: FileID, PatientID (when known), fold (1..K; 0 for the test split, which no fold uses).
  Written first; a rerun recomputes the folds and refuses to continue if they differ.
- fold_<k>/: a normal run directory (config.ini, split.csv, checkpoints, logs/, evaluation/) whose
  val split is fold k and whose train split is the other folds; the test split is the run's too.
- cv_state.json: the folds whose training has finished. A rerun of the same command skips them,
  resumes a fold that has a last_model.pth, and starts the others.
- oof_predictions.csv: each non-test image's predictions by the one model that did not train on
  it (the fold runs' predictions_val.csv together), in the predictions format.
- cv_summary.json: per-fold metrics (held-out fold and test split), their mean and sample standard
  deviation, and the metrics of the pooled out-of-fold predictions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.config.schema import Config
from src.config.trained import checkpoint_config
from src.data.load import DataBundle, load_data
from src.data.split import fold_splits, plan_folds
from src.engine.metrics import compute_all_metrics
from src.evaluation.evaluate import evaluate_model
from src.evaluation.predictions import predictions_arrays
from src.training.trainer import TrainResult, resume_point, train_model
from src.utils.errors import ConfigError
from src.utils.io import atomic_write_csv, atomic_write_text
from src.utils.logging import logger
from src.utils.run_dir import FOLDS_CSV, LAST, cv_dir, fold_dir

STATE_JSON, SUMMARY_JSON, OOF_CSV = "cv_state.json", "cv_summary.json", "oof_predictions.csv"


def _record_plan(out: Path, data: DataBundle, folds: np.ndarray) -> None:
    """Write folds.csv, or check that an existing one (a run being continued) has the same folds."""
    columns = ["FileID"] + (["PatientID"] if "PatientID" in data.table else [])
    plan = data.table[columns].assign(fold=folds)
    path = out / FOLDS_CSV
    if path.is_file():
        saved = pd.read_csv(path, dtype=str, keep_default_na=False)
        if saved.to_dict("list") != plan.astype(str).to_dict("list"):
            raise ConfigError(f"{path}: this cross-validation was started with other folds (labels, folds, seed "
                              f"or split settings changed); use another [Training] run_name or delete {out}")
        return
    atomic_write_csv(path, plan)


def _read_state(out: Path) -> dict[str, int]:
    path = out / STATE_JSON
    return json.loads(path.read_text())["finished"] if path.is_file() else {}


def _train_fold(cfg: Config, data: DataBundle, run_dir: Path, k: int, n_folds: int,
                on_epoch_end: Callable[[int, dict], None] | None) -> TrainResult:
    """Train fold k in `run_dir`: continue it from its last_model.pth when there is one."""
    if (run_dir / LAST).is_file():
        resume = resume_point(run_dir)
        cfg = checkpoint_config(resume.state, cfg, resume.path)
        return train_model(cfg, data, on_epoch_end=on_epoch_end, resume=resume)
    provenance = f"Cross-validation {run_dir.parent.name}, fold {k} of {n_folds}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return train_model(cfg, data, on_epoch_end=on_epoch_end, provenance=provenance, run_dir=run_dir)


@dataclass
class CVResult:
    cv_dir: Path
    folds: dict[int, dict[str, dict[str, float]]]  # fold -> {"val" (held out), "test"} -> metrics
    mean: dict[str, dict[str, float]]  # "val"/"test" -> metric -> mean over folds
    std: dict[str, dict[str, float]]  # the same, sample standard deviation (ddof = 1)
    oof: dict[str, float]  # metrics of the pooled out-of-fold predictions


def _mean_std(per_fold: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    names = per_fold[0].keys()
    values = {n: np.array([m[n] for m in per_fold], dtype=float) for n in names}
    # nan-aware: a metric undefined on one fold (e.g. no Severe case) averages over the others.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metrics stay NaN, silently
        return ({n: float(np.nanmean(v)) for n, v in values.items()},
                {n: float(np.nanstd(v, ddof=1)) for n, v in values.items()})


def summarise(cfg: Config, out: Path, n_folds: int) -> CVResult:
    """Evaluate every fold's run (held-out fold and test split), pool the out-of-fold predictions, and
    write oof_predictions.csv and cv_summary.json."""
    folds: dict[int, dict[str, dict[str, float]]] = {}
    for k in range(1, n_folds + 1):
        folds[k] = evaluate_model(cfg, run=str(fold_dir(out, k)))
    oof = pd.concat([pd.read_csv(fold_dir(out, k) / "evaluation" / "predictions_val.csv", dtype={"FileID": str},
                                 keep_default_na=False) for k in folds], ignore_index=True)
    order = pd.read_csv(out / FOLDS_CSV, dtype={"FileID": str}, keep_default_na=False)
    order = order.loc[order["fold"] != 0, "FileID"]
    oof = oof.set_index("FileID").loc[order].reset_index()
    atomic_write_csv(out / OOF_CSV, oof)
    file_ids, targets, _, probs = predictions_arrays(oof)
    low, high = cfg.evaluation.ahf_low_threshold, cfg.evaluation.ahf_high_threshold
    oof_metrics = compute_all_metrics(targets, probs.argmax(-1), probs, ahf_low=low, ahf_high=high)
    splits = [s for s in ("val", "test") if all(s in m for m in folds.values())]  # no test split: val only
    mean, std = {}, {}
    for split in splits:
        mean[split], std[split] = _mean_std([folds[k][split] for k in folds])
    result = CVResult(out, folds, mean, std, oof_metrics)
    named = {"val": "held_out", "test": "test"}
    summary = {"cv_dir": str(out), "folds": n_folds, "images_out_of_fold": len(file_ids),
               "per_fold": {f"fold_{k}": {named[s]: m[s] for s in splits} for k, m in folds.items()},
               "mean": {named[s]: mean[s] for s in splits},
               "std": {named[s]: std[s] for s in splits},
               "std_definition": "sample standard deviation over the folds (ddof = 1)",
               "out_of_fold": oof_metrics}
    atomic_write_text(out / SUMMARY_JSON, json.dumps(summary, indent=1))
    return result


def run_cross_validation(cfg: Config, on_epoch_end: Callable[[int, int, dict], None] | None = None) -> CVResult:
    """Train the [CrossValidation] folds folds (continuing an interrupted cross-validation of the same
    name), then summarise them. `on_epoch_end(fold, epoch, metrics)` is called after every epoch."""
    n_folds = cfg.crossvalidation.folds
    out = cv_dir(cfg.training.output_dir, cfg.training.run_name)
    data = load_data(cfg)
    folds = plan_folds(data.table, n_folds, cfg.training.seed)
    out.mkdir(parents=True, exist_ok=True)
    _record_plan(out, data, folds)
    finished = _read_state(out)
    for k in range(1, n_folds + 1):
        if str(k) in finished:
            logger.info(f"fold {k}/{n_folds}: finished earlier (epoch {finished[str(k)]} best)")
            continue
        logger.info(f"fold {k}/{n_folds}: {(folds == k).sum()} held-out images, {((folds != k) & (folds != 0)).sum()} "
                    "training images")
        hook = None if on_epoch_end is None else (lambda epoch, metrics, k=k: on_epoch_end(k, epoch, metrics))
        result = _train_fold(cfg, data.with_splits(fold_splits(folds, k)), fold_dir(out, k), k, n_folds, hook)
        finished[str(k)] = result.best_epoch
        atomic_write_text(out / STATE_JSON, json.dumps({"finished": finished}, indent=1))
    return summarise(cfg, out, n_folds)
