"""Ensembles: several checkpoints scored on the same images, their class probabilities combined.

Every member is scored with its own recorded preprocessing (and [Evaluation] tta), and with
[Evaluation] calibrate = true its probabilities are scaled by its own stored temperature first; the
ensemble's probabilities are the members' mean, or their geometric mean renormalised over the
classes (the natural pooling of calibrated log-probabilities: [Evaluation] ensemble_average =
geometric, or auto with calibrate). Members are reported beside the ensemble, on exactly the same
images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from src.config.schema import Config
from src.engine.metrics import compute_all_metrics
from src.engine.predict import Predictions
from src.evaluation.bootstrap import BootstrapSettings, metric_intervals, resampling_units
from src.evaluation.calibration import apply_temperature, stored_temperature
from src.evaluation.evaluate import predict_checkpoint, resolve_checkpoint, write_split_outputs
from src.utils.errors import CheckpointError
from src.utils.io import atomic_write_text
from src.utils.logging import logger
from src.utils.run_dir import fold_dirs, is_cv_dir

ENSEMBLE = "ensemble"


def combine_probabilities(probs: Sequence[np.ndarray], method: str = "mean") -> np.ndarray:
    """Class probabilities [N, 6, 5] of an ensemble from its members' (each [N, 6, 5])."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if method == "mean":
        return stacked.mean(axis=0)
    if method != "geometric":
        raise ValueError(f"ensemble average must be mean or geometric, got {method!r}")
    log_mean = np.log(np.clip(stacked, 1e-12, None)).mean(axis=0)
    unnormalised = np.exp(log_mean - log_mean.max(axis=-1, keepdims=True))
    return unnormalised / unnormalised.sum(axis=-1, keepdims=True)


def ensemble_average(cfg: Config) -> str:
    """mean or geometric: [Evaluation] ensemble_average, auto meaning geometric for calibrated members."""
    if cfg.evaluation.ensemble_average == "auto":
        return "geometric" if cfg.evaluation.calibrate else "mean"
    return cfg.evaluation.ensemble_average


def ensemble_checkpoints(cfg: Config, runs: Sequence[str] = (), checkpoints: Sequence[str] = ()) -> list[Path]:
    """The checkpoints --run (a run directory's chosen checkpoint, or every fold's of a
    cross-validation directory) and --checkpoint name, in that order; the latest run when none."""
    members: list[Path] = []
    for run in runs:
        if is_cv_dir(run):
            folds = fold_dirs(run)
            if not folds:
                raise CheckpointError(f"{run}: cross-validation directory without fold_<k> runs; run --mode cv")
            members += [resolve_checkpoint(cfg, str(fold)) for fold in folds]
        else:
            members.append(resolve_checkpoint(cfg, run))
    members += [Path(c) for c in checkpoints]
    return members or [resolve_checkpoint(cfg)]


def member_names(checkpoints: Sequence[Path]) -> list[str]:
    """A short, unique column name per member: its run directory's name (fold_1, ...), or the file's."""
    names = [c.parent.name or c.stem for c in checkpoints]
    if len(set(names)) < len(names):
        names = [f"{c.parent.name}/{c.name}" for c in checkpoints]
    return [f"{name} ({i})" if names.count(name) > 1 else name for i, name in enumerate(names, 1)]


def ensemble_dir(cfg: Config, runs: Sequence[str], checkpoints: Sequence[Path]) -> Path:
    """Where an ensemble's evaluation goes: a cross-validation directory's own evaluation/ for --run
    CV_DIR alone, else <output_dir>/ensembles/<digest of the member paths>/evaluation/."""
    if len(runs) == 1 and is_cv_dir(runs[0]) and len(checkpoints) == len(fold_dirs(runs[0])):
        return Path(runs[0]) / "evaluation"
    digest = hashlib.sha1("\n".join(str(c.resolve()) for c in checkpoints).encode()).hexdigest()[:10]
    return Path(cfg.training.output_dir) / "ensembles" / digest / "evaluation"


def aligned(members: Sequence[Predictions]) -> list[Predictions] | None:
    """The members' predictions reordered to the first's images, or None when the image sets differ."""
    order = members[0].file_ids
    if any(sorted(m.file_ids) != sorted(order) for m in members[1:]):
        return None
    result = []
    for m in members:
        position = {f: i for i, f in enumerate(m.file_ids)}
        index = [position[f] for f in order]
        result.append(Predictions(list(order), m.probs[index], m.targets[index], m.loss))
    return result


@dataclass
class EnsembleEvaluation:
    metrics: dict[str, dict[str, dict[str, float]]]  # split -> member name or 'ensemble' -> metrics
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]]  # the same -> metric -> 95% bootstrap CI
    out_dir: Path


def evaluate_ensemble(cfg: Config, checkpoints: Sequence[Path], out: Path,
                      splits: tuple[str, ...] = ("val", "test")) -> EnsembleEvaluation:
    """Metrics and bootstrap CIs of every member and of the ensemble, on the splits every member's run
    holds alike (the test split of a cross-validation's folds; their val splits differ); the CIs of
    all columns resample the same patients (images when PatientID is unknown). Writes the ensemble's
    predictions_<split>.csv, confusion matrices and a metrics.json with every member's to `out`."""
    scored = [predict_checkpoint(cfg, c, splits) for c in checkpoints]
    if cfg.evaluation.calibrate:
        for s in scored:
            temperature = stored_temperature(s.state, s.checkpoint, cfg.evaluation.tta)
            s.splits = {split: replace(pred, probs=apply_temperature(pred.probs, temperature))
                        for split, pred in s.splits.items()}
    names = member_names(checkpoints)
    method = ensemble_average(cfg)
    low, high = cfg.evaluation.ahf_low_threshold, cfg.evaluation.ahf_high_threshold
    bootstrap = BootstrapSettings(cfg.evaluation.bootstrap_samples, cfg.evaluation.bootstrap_seed)
    table = scored[0].data.table.set_index("FileID")
    results: dict[str, dict[str, dict[str, float]]] = {}
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for split in splits:
        if any(split not in s.splits for s in scored):
            continue
        members = aligned([s.splits[split] for s in scored])
        if members is None:
            logger.info(f"{split} split: the members' runs hold different images; not scored as an ensemble")
            continue
        first = members[0]
        combined = Predictions(first.file_ids, combine_probabilities([m.probs for m in members], method),
                               first.targets, float("nan"))
        results[split] = {name: compute_all_metrics(m.targets, m.probs.argmax(-1), m.probs, ahf_low=low, ahf_high=high)
                          for name, m in zip(names, members)}
        results[split][ENSEMBLE], _ = write_split_outputs(out, split, combined, low, high)
        units = resampling_units(first.file_ids, table.loc[first.file_ids, "PatientID"].tolist()
                                 if "PatientID" in table else None)
        intervals[split] = {name: metric_intervals(m.targets, m.probs.argmax(-1), m.probs, units, bootstrap, low, high)
                            for name, m in zip([*names, ENSEMBLE], [*members, combined])}
    if not results:
        raise CheckpointError(f"{', '.join(map(str, checkpoints))}: no split with the same images in every "
                              "member's split.csv; an ensemble needs members evaluated on the same split")
    report = {"members": [{"name": n, "checkpoint": str(s.checkpoint), "epoch": s.state.get("epoch"),
                           "arch": s.state["arch"]} for n, s in zip(names, scored)],
              "average": method, "calibrated": cfg.evaluation.calibrate, "tta": cfg.evaluation.tta,
              "metrics": results,
              "metrics_ci95": {split: {name: {k: list(v) for k, v in by_metric.items()}
                                       for name, by_metric in by_name.items()} for split, by_name in intervals.items()},
              "bootstrap": {"samples": bootstrap.samples, "seed": bootstrap.seed, "level": bootstrap.level}}
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1))
    return EnsembleEvaluation(results, intervals, out)
