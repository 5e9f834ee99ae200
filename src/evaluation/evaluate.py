"""evaluate_model: a trained run's best checkpoint on its saved validation and test splits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.config.schema import Config
from src.data.dataset import loader_options, make_loader
from src.data.load import DataBundle, load_data
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.data.zones import CLASS_NAMES, ZONES
from src.engine.metrics import AHF_CLASSES, ahf_confusion_matrix, compute_all_metrics, confusion_matrices
from src.engine.predict import Predictions, predict_batches
from src.engine.probabilities import Probabilities, probabilities_for
from src.engine.settings import LoopSettings, place_model
from src.evaluation.analysis import analyse_split, analyses_json, fit_calibration
from src.evaluation.bootstrap import BootstrapSettings, resampling_units
from src.evaluation.clinical import study_split, units_of
from src.evaluation.plots import plot_confusion_matrices, plot_training_curves
from src.evaluation.predictions import predictions_table
from src.evaluation.report import EvaluationRun, write_evaluation_report
from src.evaluation.saliency import explain_selected_images
from src.evaluation.tta import with_tta
from src.models.factory import CSIModel, load_trained_model
from src.utils.checkpoint import save_checkpoint
from src.utils.device import resolve_device
from src.utils.errors import CheckpointError
from src.utils.io import atomic_write_csv, atomic_write_text
from src.utils.logging import logger
from src.utils.run_dir import BEST, LAST, find_latest_run


def resolve_checkpoint(cfg: Config, run: str | None = None, checkpoint: str | None = None) -> Path:
    """--checkpoint FILE, else the chosen checkpoint of --run DIR, else of the latest run."""
    if checkpoint:
        return Path(checkpoint)
    run_dir = Path(run) if run else find_latest_run(cfg.training.output_dir)
    path = run_dir / (BEST if cfg.evaluation.checkpoint == "best" else LAST)
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {path.name} in this run directory")
    return path


def loop_settings(cfg: Config, model: torch.nn.Module) -> tuple[torch.device, LoopSettings, Probabilities]:
    """The device, step settings and logits -> probabilities map (as the model was trained to output)
    for scoring with `model`, which is moved to that device."""
    device = resolve_device(cfg.training.device)
    settings = LoopSettings.from_config(cfg, device, measure=False)  # scoring never times training steps
    place_model(model, device, settings)
    return device, settings, probabilities_for(cfg.loss.loss)


def store_calibration(path: Path, state: dict, calibration: dict[str, float | str] | None) -> None:
    """Keep the temperature with the checkpoint it was fitted for (rewritten only when it changed)."""
    if calibration is not None and state.get("calibration") != calibration:
        save_checkpoint(path, {k: v for k, v in state.items() if k != "format"} | {"calibration": calibration})
        logger.info(f"{path}: stored temperature {calibration['temperature']:.3f} fitted on the validation split")


@dataclass
class CheckpointPredictions:
    """A checkpoint scored on its run's saved splits."""

    checkpoint: Path
    state: dict  # the checkpoint (epoch, arch, calibration, ...)
    trained_cfg: Config
    model: CSIModel  # on its device, without test-time augmentation
    data: DataBundle  # the run's images and split
    splits: dict[str, Predictions]  # split -> predictions; empty splits left out


def predict_checkpoint(cfg: Config, checkpoint_path: Path, splits: tuple[str, ...]) -> CheckpointPredictions:
    """Class probabilities of a checkpoint on `splits` of its run's split.csv, with [Evaluation] tta."""
    model, trained_cfg, state = load_trained_model(cfg, checkpoint_path)
    run_dir = checkpoint_path.parent
    split_csv = run_dir / "split.csv"
    if not split_csv.is_file():
        raise CheckpointError(f"{run_dir}: no split.csv beside {checkpoint_path.name}; eval needs the run's split")
    data = load_data(trained_cfg, split_csv=split_csv, with_outcome=True)
    device, settings, probabilities = loop_settings(trained_cfg, model)
    normalization = Normalization.of(trained_cfg.data)
    predictor, probabilities = with_tta(model, probabilities, trained_cfg.evaluation.tta, normalization.mean,
                                        normalization.std)
    predictions = {}
    for split in splits:
        dataset = data.dataset(split)
        if len(dataset) == 0:
            continue
        loader = make_loader(dataset, trained_cfg.evaluation.batch_size, shuffle=False,
                             **loader_options(trained_cfg.training, device))
        predictions[split] = predict_batches(predictor, loader, device, settings, desc=f"evaluate {split}",
                                             probabilities=probabilities, prepare=BatchPreparer(normalization))
    return CheckpointPredictions(checkpoint_path, state, trained_cfg, model, data, predictions)


def write_split_outputs(out: Path, split: str, pred: Predictions, low: float, high: float,
                        plot: bool = True) -> tuple[dict[str, float], list[Path]]:
    """Metrics of one split's predictions; writes predictions_<split>.csv and, with `plot`, its
    confusion matrices (whose paths are returned) to `out`."""
    y_pred = pred.probs.argmax(-1)
    metrics = compute_all_metrics(pred.targets, y_pred, pred.probs, ahf_low=low, ahf_high=high)
    table = predictions_table(pred.file_ids, pred.probs, pred.targets, low, high)
    atomic_write_csv(out / f"predictions_{split}.csv", table)
    matrices = confusion_matrices(pred.targets, y_pred)
    panels = {"zones": ({z: matrices[z] for z in ZONES}, CLASS_NAMES, "zones"),
              "overall": ({"all zones": matrices["overall"]}, CLASS_NAMES, "overall"),
              "ahf": ({"AHF": ahf_confusion_matrix(pred.targets, y_pred, low, high, pred.probs)}, AHF_CLASSES,
                      "AHF class")}
    figures = []
    for kind, (panel, labels, title) in panels.items() if plot else ():
        figures.append(out / f"confusion_{kind}_{split}.png")
        plot_confusion_matrices(panel, labels, f"{split}: {title}", figures[-1])
    return metrics, figures


def evaluate_run(cfg: Config, run: str | None = None, checkpoint: str | None = None,
                 splits: tuple[str, ...] = ("val", "test")) -> EvaluationRun:
    """Metrics and statistics per split; writes metrics.json, predictions_<split>.csv, PNG figures
    (agreement and calibration of the test split), Grad-CAM strips of test images (saliency/) and
    report.html to <run>/evaluation/, and the temperature fitted on the validation split into the
    checkpoint."""
    checkpoint_path = resolve_checkpoint(cfg, run, checkpoint)
    scored = predict_checkpoint(cfg, checkpoint_path, splits)
    model, trained_cfg, state, data, predictions = (scored.model, scored.trained_cfg, scored.state, scored.data,
                                                    scored.splits)
    run_dir = checkpoint_path.parent
    low, high = trained_cfg.evaluation.ahf_low_threshold, trained_cfg.evaluation.ahf_high_threshold
    out = run_dir / "evaluation"
    results: dict[str, dict[str, float]] = {}
    figures: dict[str, list[Path]] = {"confusion": [], "training_curves": [], "saliency": []}
    for split, pred in predictions.items():
        results[split], confusion = write_split_outputs(out, split, pred, low, high)
        figures["confusion"] += confusion
    evaluation_cfg = trained_cfg.evaluation
    calibration = ({**fit_calibration(predictions["val"]), "tta": evaluation_cfg.tta} if "val" in predictions
                   else None)
    store_calibration(checkpoint_path, state, calibration)
    bootstrap = BootstrapSettings(evaluation_cfg.bootstrap_samples, evaluation_cfg.bootstrap_seed)
    patient_of = data.table.set_index("FileID")["PatientID"] if "PatientID" in data.table else None
    temperature = calibration["temperature"] if calibration else 1.0
    shown = "test" if "test" in predictions else next(iter(predictions), None)  # the split a paper reports
    analyses = {split: analyse_split(pred, split, None if patient_of is None else patient_of[pred.file_ids].tolist(),
                                     bootstrap, (low, high), temperature, out, plot=split == shown)
                for split, pred in predictions.items()}
    figures["statistics"] = [path for a in analyses.values() for path in a.figures]
    readers, outcome = (None, None) if shown is None else study_split(
        data.table.set_index("FileID"), predictions[shown], shown,
        *bootstrap_units(data.table, predictions[shown].file_ids), trained_cfg.data.consensus,
        evaluation_cfg.outcome_column, bootstrap, (low, high), out)
    report = {"checkpoint": str(checkpoint_path), "epoch": state.get("epoch"), "arch": state["arch"],
              "tta": evaluation_cfg.tta, "metrics": results, **analyses_json(analyses, bootstrap, calibration),
              **study_json(shown, readers, outcome)}
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1))
    figures["training_curves"] = training_curves(run_dir, state, out)
    evaluation = EvaluationRun(trained_cfg, checkpoint_path, state, data, predictions, results, out, figures,
                               analyses, calibration, shown or "", readers, outcome)
    if "test" in predictions:
        figures["saliency"] = explain_selected_images(
            model, data.dataset("test"), BatchPreparer(Normalization.of(trained_cfg.data)), predictions["test"],
            cfg.evaluation.saliency_largest_error,
            cfg.evaluation.saliency_random, trained_cfg.training.seed, out / "saliency")
    write_evaluation_report(evaluation)
    return evaluation


def bootstrap_units(table: pd.DataFrame, file_ids: list[str]) -> tuple[np.ndarray, str]:
    """Each image's bootstrap unit and what the units are (patients or images)."""
    patients, unit_name = units_of(table.set_index("FileID"), file_ids)
    return resampling_units(file_ids, patients), unit_name


def study_json(split: str | None, readers, outcome) -> dict:
    """metrics.json's entries of the reader study and the outcome analysis (none when absent)."""
    return {**({"readers": {"split": split, **readers.to_json()}} if readers is not None else {}),
            **({"outcome": {"split": split, **outcome.to_json()}} if outcome is not None else {})}


def training_curves(run_dir: Path, state: dict, out: Path) -> list[Path]:
    """training_curves.png of a run's histories in `out` (the evaluated checkpoint's epoch marked), when it has them."""
    history = run_dir / "logs" / "training_history.json", run_dir / "logs" / "validation_history.json"
    if not all(p.is_file() for p in history):
        return []
    train_h, val_h = (json.loads(p.read_text()) for p in history)
    plot_training_curves(train_h, val_h, out / "training_curves.png", state.get("epoch"))
    return [out / "training_curves.png"]


def evaluate_model(cfg: Config, run: str | None = None, checkpoint: str | None = None,
                   splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, float]]:
    """`evaluate_run`'s metrics per split (plain floats)."""
    return evaluate_run(cfg, run, checkpoint, splits).metrics


def metrics_table(results: dict[str, dict[str, float]], names: tuple[str, ...],
                  intervals: dict[str, dict[str, tuple[float, float]]] | None = None) -> pd.DataFrame:
    """Rows = metric names, columns = splits, each value followed by its interval when given; for the console."""
    def cell(split: str, name: str) -> str | float:
        value = results[split].get(name, np.nan)
        if intervals is None or name not in intervals.get(split, {}):
            return round(value, 4)
        low, high = intervals[split][name]
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return pd.DataFrame({split: [cell(split, n) for n in names] for split in results}, index=list(names))
