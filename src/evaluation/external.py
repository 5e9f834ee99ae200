"""eval --labels FILE: a trained model (one run or checkpoint, or an ensemble of several) scored on an
external labelled set, beside its internal test split.

Invariants:
- The external images are prepared as the model was trained (its image size, resizing, clipping,
  normalisation, from the checkpoint); how they are found and read is today's config: [Data]
  image_dir (--image-dir), mask_dir (--masks), label_format, consensus, separators, on_missing.
- An image the model trained or was validated on is refused unless --allow-overlap, found by its
  file (the same resolved path) or by its content: the SHA-256 of its decoded, preprocessed pixels,
  computed alike for the run's train and val images and the external ones from the cache (the same
  store, since the preprocessing is the same). A copy renamed, moved, re-saved lossless or
  re-exported with other DICOM tags has the same pixels; the raw bytes would differ. A lossy
  re-encoding is not caught (no exact hash can be). Images with nothing to see (every pixel 0
  after decoding) are left out of the content match: all of them hash alike.
- The internal test split is scored again from the run's split.csv (as eval does), so its
  predictions and the external set's come from the same model and settings; when the training
  data is not at hand the overlap cannot be checked, which is refused unless --allow-overlap (and
  the comparison is then left out, saying why).
- Outputs go to <run>/evaluation/<name>/ (an ensemble: its evaluation directory's <name>/), written
  as eval writes its own, plus the site comparison, the reader study and the outcome analysis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from src.config.loader import apply_overrides
from src.config.schema import Config, DataConfig
from src.data.dataset import CSIDataset
from src.data.label_sources import check_known_scores
from src.data.load import DataBundle, cache_images, labelled_images
from src.data.masks import scoring_zones
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.data.sanity import check_split_scores
from src.data.zones import ZONES
from src.engine.predict import Predictions
from src.evaluation.analysis import analyse_split, analyses_json, fit_calibration
from src.evaluation.bootstrap import BootstrapSettings
from src.evaluation.calibration import fitted_tta
from src.evaluation.clinical import study_split
from src.evaluation.ensemble import aligned, combine_probabilities, ensemble_average
from src.evaluation.evaluate import (
    CheckpointPredictions,
    bootstrap_units,
    predict_checkpoint,
    store_calibration,
    study_json,
    training_curves,
    write_split_outputs,
)
from src.evaluation.predict import score_dataset
from src.evaluation.report import EvaluationRun, write_evaluation_report
from src.evaluation.saliency import explain_selected_images
from src.evaluation.sites import SiteComparison, calibration_table, site_differences
from src.models.factory import CSIModel, load_trained_model
from src.utils.errors import CSIError, DataError, first_line
from src.utils.io import atomic_write_csv, atomic_write_text
from src.utils.logging import logger

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LISTED = 10
INTERNAL = "test"
# Keys of today's [Data] that say where the external images and labels are and how to read them.
READING_KEYS = ("image_dir", "image_extension", "recursive", "allow_outside_paths", "csv_separator", "csv_encoding",
                "label_format", "consensus", "on_missing", "mask_dir", "on_missing_mask", "cache_dir")


def external_name(labels: Sequence[str | Path], name: str | None) -> str:
    """--name, else the first labels file's stem: a folder name of letters, digits, '.', '_' and '-'."""
    chosen = name or Path(labels[0]).stem
    if not _NAME.fullmatch(chosen) or chosen in (INTERNAL, "val", "train"):
        raise CSIError(f"--name {chosen!r}: name the external set with letters, digits, '.', '_' or '-' (not "
                       "train, val or test), e.g. --name site_b")
    return chosen


def reading_config(today: DataConfig, trained: DataConfig) -> DataConfig:
    """The trained model's preprocessing with today's keys for finding and reading the external set."""
    return dataclasses.replace(trained, **{key: getattr(today, key) for key in READING_KEYS})


def read_external(cfg: Config, trained_cfg: Config, labels: Sequence[str | Path], name: str) -> DataBundle:
    """The external set's usable images and labels (split = `name`), cached with the model's preprocessing."""
    data = reading_config(cfg.data, trained_cfg.data)
    table, paths = labelled_images(data, labels, cfg.evaluation.outcome_column)
    cache, cache_index, skipped = cache_images(table["FileID"].tolist(), paths, data, labels[0])
    table = table.assign(path=[str(p) if p else "" for p in paths], cache_index=cache_index)
    table = table[cache_index >= 0].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{labels[0]}: no usable image in {data.image_dir} (--image-dir)")
    check_known_scores(table, f"{labels[0]} (its usable images)")
    table["split"] = name
    check_split_scores(table, labels[0])
    return DataBundle(table=table, skipped=skipped, cache=cache)


def pixel_digests(images, rows: Sequence[int]) -> list[str | None]:
    """SHA-256 of each cached image's pixels; None for an image with nothing to see (all 0)."""
    digests = []
    for row in rows:
        pixels = np.ascontiguousarray(images[int(row)])
        digests.append(hashlib.sha256(pixels.tobytes()).hexdigest() if pixels.any() else None)
    return digests


def find_overlap(external: DataBundle, trained: Sequence[DataBundle]) -> pd.DataFrame:
    """External images that one of the `trained` runs' train or val splits holds: FileID, the run's
    FileID and how they match (same file, same pixels)."""
    by_path, by_pixels = {}, {}
    for data in trained:
        seen = data.table[data.table["split"].isin(("train", "val"))]
        by_path |= {str(Path(p).resolve()): f for f, p in zip(seen["FileID"], seen["path"])}
        by_pixels |= {d: f for f, d in zip(seen["FileID"], pixel_digests(data.cache.images, seen["cache_index"]))
                      if d is not None}
    rows = []
    table = external.table
    digests = pixel_digests(external.cache.images, table["cache_index"])
    for file_id, path, digest in zip(table["FileID"], table["path"], digests):
        if str(Path(path).resolve()) in by_path:
            rows.append({"FileID": file_id, "trained_FileID": by_path[str(Path(path).resolve())], "match": "same file"})
        elif digest in by_pixels:
            rows.append({"FileID": file_id, "trained_FileID": by_pixels[digest], "match": "same pixels"})
    return pd.DataFrame(rows, columns=["FileID", "trained_FileID", "match"])


@dataclasses.dataclass
class ExternalScores:
    """One member's view of the external set."""

    bundle: DataBundle
    pred: Predictions
    dataset: CSIDataset
    model: CSIModel
    trained_cfg: Config
    state: dict


def _score_external(cfg: Config, member: CheckpointPredictions | Path, labels: Sequence[str | Path], name: str
                    ) -> ExternalScores:
    """One member's predictions on the external set (read with its preprocessing)."""
    if isinstance(member, CheckpointPredictions):
        model, trained_cfg, state, checkpoint = member.model, member.trained_cfg, member.state, member.checkpoint
    else:
        (model, trained_cfg, state), checkpoint = load_trained_model(cfg, member), member
    bundle = read_external(cfg, trained_cfg, labels, name)
    rows, file_ids = bundle.table["cache_index"].to_numpy(), bundle.table["FileID"].tolist()
    if model.input_channels > 1:  # trained with lung masks: those of today's [Data] mask_dir (--masks)
        bundle.zones = scoring_zones(reading_config(cfg.data, trained_cfg.data), trained_cfg.model.zone_split,
                                     checkpoint, file_ids, bundle.cache, rows)
    dataset = CSIDataset(bundle.cache.images, rows, bundle.table[list(ZONES)].to_numpy(), file_ids, bundle.zones)
    pred, _ = score_dataset(model, trained_cfg, dataset)
    return ExternalScores(bundle, pred, dataset, model, trained_cfg, state)


def _combined(members: Sequence[Predictions], method: str, what: str) -> Predictions:
    if len(members) == 1:
        return members[0]
    same = aligned(list(members))
    if same is None:
        raise DataError(f"{what}: the ensemble's members kept different images (their preprocessing differs); "
                        "evaluate them one by one")
    return Predictions(same[0].file_ids, combine_probabilities([m.probs for m in same], method), same[0].targets,
                       float("nan"))


def _temperature(state: dict, trained_cfg: Config, scored: CheckpointPredictions | None) -> dict | None:
    """The checkpoint's stored temperature for its tta, else one fitted on its validation split (`scored`,
    when the run's data is at hand) and stored, as eval does."""
    stored = state.get("calibration")
    if stored is not None and fitted_tta(stored) == trained_cfg.evaluation.tta:
        return stored
    if scored is None or "val" not in scored.splits:
        return None
    calibration = {**fit_calibration(scored.splits["val"]), "tta": trained_cfg.evaluation.tta}
    store_calibration(scored.checkpoint, scored.state, calibration)
    return calibration


def evaluate_external(cfg: Config, checkpoints: Sequence[Path], labels: Sequence[str | Path], name: str | None,
                      allow_overlap: bool, out_root: Path) -> EvaluationRun:
    """Score `checkpoints` (one, or an ensemble) on the labelled set of `labels` (one file, or one per
    reader) and write everything to `out_root`/<name>/ (see the module docstring)."""
    name = external_name(labels, name)
    out = out_root / name
    notes: list[str] = []
    internal: list[CheckpointPredictions] = []
    own_data = apply_overrides(cfg, {"Evaluation.outcome_column": ""})  # the outcome is the external set's
    try:
        internal = [predict_checkpoint(own_data, c, ("val", INTERNAL)) for c in checkpoints]
    except CSIError as exc:
        if not allow_overlap:
            raise DataError(f"{checkpoints[0]}: cannot tell which images trained it ({first_line(exc)}); pass "
                            f"--allow-overlap to score {labels[0]} without that check") from None
        notes.append(f"The run's own data could not be read ({first_line(exc)}): overlap not checked and no "
                     "internal test split to compare with (--allow-overlap).")
    method = ensemble_average(cfg)
    scored = [_score_external(cfg, member, labels, name) for member in (internal or checkpoints)]
    first = scored[0]
    bundle, trained_cfg, state = first.bundle, first.trained_cfg, first.state
    external = _combined([s.pred for s in scored], method, str(labels[0]))

    overlap = find_overlap(bundle, [s.data for s in internal]) if internal else None
    if overlap is not None and len(overlap):
        listed = ", ".join(f"{r.FileID} ({r.match} as {r.trained_FileID})" for r in overlap.head(_LISTED).itertuples())
        more = f" and {len(overlap) - _LISTED} more" if len(overlap) > _LISTED else ""
        message = (f"{labels[0]}: {len(overlap)} of its images trained or validated the model: {listed}{more}")
        if not allow_overlap:
            raise DataError(f"{message}; remove them, or pass --allow-overlap to score them anyway")
        logger.warning(f"{message}; scored anyway (--allow-overlap)")
        notes.append(f"{len(overlap)} image(s) of this set trained or validated the model; scored anyway "
                     "(--allow-overlap): overlap.csv lists them.")
        atomic_write_csv(out / "overlap.csv", overlap)
    elif overlap is not None:
        notes.append("No image of this set is among the run's train and val images (checked by file and by "
                     "the SHA-256 of the decoded pixels).")

    evaluation = trained_cfg.evaluation
    low, high = evaluation.ahf_low_threshold, evaluation.ahf_high_threshold
    bootstrap = BootstrapSettings(evaluation.bootstrap_samples, evaluation.bootstrap_seed)
    predictions: dict[str, Predictions] = {}
    if internal and all(INTERNAL in s.splits for s in internal):
        try:
            predictions[INTERNAL] = _combined([s.splits[INTERNAL] for s in internal], method, "internal test split")
        except DataError as exc:
            notes.append(f"No internal comparison: {first_line(exc)}")
    elif internal:
        notes.append("The run has no test split: no internal comparison.")
    predictions[name] = external
    calibration = _temperature(state, trained_cfg, internal[0] if internal else None) if len(checkpoints) == 1 else None
    if len(checkpoints) > 1:
        notes.append(f"An ensemble of {len(checkpoints)} checkpoints ({method} of their probabilities): no single "
                     "temperature, calibration shown as it is.")
    temperature = calibration["temperature"] if calibration else 1.0

    results, figures = {}, {"confusion": [], "saliency": []}
    for split, pred in predictions.items():  # the internal split's figures are in the run's own evaluation
        results[split], confusion = write_split_outputs(out, split, pred, low, high, plot=split == name)
        figures["confusion"] += confusion
    tables = {INTERNAL: internal[0].data.table if internal else None, name: bundle.table}
    units = {split: bootstrap_units(tables[split], pred.file_ids) for split, pred in predictions.items()}
    analyses = {split: analyse_split(pred, split, None if "PatientID" not in tables[split] else
                                     tables[split].set_index("FileID").loc[pred.file_ids, "PatientID"].tolist(),
                                     bootstrap, (low, high), temperature, out, plot=split == name)
                for split, pred in predictions.items()}
    figures["statistics"] = [path for a in analyses.values() for path in a.figures]
    differences = (site_differences(predictions[INTERNAL], units[INTERNAL][0], external, units[name][0], bootstrap,
                                    (low, high)) if INTERNAL in predictions else pd.DataFrame())
    site = SiteComparison(INTERNAL, name, differences,
                          calibration_table({split: a.calibration for split, a in analyses.items()}),
                          calibration["temperature"] if calibration else None, notes)
    readers, outcome = study_split(bundle.table.set_index("FileID"), external, name, *units[name], cfg.data.consensus,
                                   cfg.evaluation.outcome_column, bootstrap, (low, high), out)
    report = {"checkpoints": [str(c) for c in checkpoints], "labels": [str(p) for p in labels], "name": name,
              "images": len(external.file_ids), "skipped": bundle.skipped.to_dict("records"),
              "metrics": results, **analyses_json(analyses, bootstrap, calibration),
              "site_comparison": site.to_json(), **study_json(name, readers, outcome)}
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1, default=float))
    run_dir = checkpoints[0].parent
    if len(checkpoints) == 1:
        figures["training_curves"] = training_curves(run_dir, state, out)
        figures["saliency"] = explain_selected_images(
            first.model, first.dataset, BatchPreparer(Normalization.of(first.trained_cfg.data)), external,
            cfg.evaluation.saliency_largest_error,
            cfg.evaluation.saliency_random, trained_cfg.training.seed, out / "saliency")
    shown_cfg = dataclasses.replace(trained_cfg, data=dataclasses.replace(
        trained_cfg.data, labels_csv=", ".join(map(str, labels))))
    run = EvaluationRun(shown_cfg, checkpoints[0], state, bundle, predictions, results, out, figures, analyses,
                        calibration, name, readers, outcome, site,
                        title=f"External evaluation: {name} ({run_dir.name if len(checkpoints) == 1 else 'ensemble'})")
    write_evaluation_report(run)
    return run
