"""predict: score new images with a trained checkpoint, using its recorded preprocessing."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.config.schema import Config
from src.data.dataset import CSIDataset, loader_options, make_loader
from src.data.inputs import cache_inputs
from src.data.masks import scoring_zones
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.data.zones import UNKNOWN, ZONES
from src.engine.predict import Predictions, predict_batches
from src.evaluation.calibration import apply_temperature, stored_temperature
from src.evaluation.ensemble import aligned, combine_probabilities, ensemble_average, member_names
from src.evaluation.evaluate import loop_settings
from src.evaluation.predictions import predictions_table
from src.evaluation.tta import with_tta
from src.models.factory import CSIModel, load_trained_model
from src.utils.io import atomic_write_csv


def prepare_scoring(cfg: Config, checkpoint: str | Path, source: str | Path
                    ) -> tuple[CSIModel, Config, CSIDataset, float | None]:
    """A checkpoint's model, the config it was trained with, the usable images of `source`
    prepared as in training (found via today's [Data] image_dir) with Unknown labels, and the
    stored temperature when [Evaluation] calibrate asks for it (else None)."""
    model, trained_cfg, state = load_trained_model(cfg, Path(checkpoint))
    evaluation = trained_cfg.evaluation
    temperature = stored_temperature(state, checkpoint, evaluation.tta) if evaluation.calibrate else None
    data = dataclasses.replace(trained_cfg.data, image_dir=cfg.data.image_dir)
    usable, cache, cache_rows = cache_inputs(cfg, data, source)
    zones = None
    if model.input_channels > 1:  # trained with lung masks: those of today's [Data] mask_dir (--masks)
        masks = dataclasses.replace(data, mask_dir=cfg.data.mask_dir, on_missing_mask=cfg.data.on_missing_mask)
        zones = scoring_zones(masks, trained_cfg.model.zone_split, checkpoint, usable["FileID"].tolist(), cache,
                              cache_rows)
    dataset = CSIDataset(cache.images, cache_rows, np.full((len(usable), len(ZONES)), UNKNOWN),
                         usable["FileID"].tolist(), zones)
    return model, trained_cfg, dataset, temperature


def score_dataset(model: CSIModel, trained_cfg: Config, dataset: CSIDataset,
                  temperature: float | None = None) -> tuple[Predictions, pd.DataFrame]:
    """Predictions for every image of `dataset` (probabilities scaled by `temperature` when given),
    and their table (see predictions_table)."""
    device, settings, probabilities = loop_settings(trained_cfg, model)
    normalization = Normalization.of(trained_cfg.data)
    predictor, probabilities = with_tta(model, probabilities, trained_cfg.evaluation.tta, normalization.mean,
                                        normalization.std)
    loader = make_loader(dataset, trained_cfg.evaluation.batch_size, shuffle=False,
                         **loader_options(trained_cfg.training, device))
    pred = predict_batches(predictor, loader, device, settings, probabilities=probabilities,
                           prepare=BatchPreparer(normalization))
    if temperature is not None:
        pred = dataclasses.replace(pred, probs=apply_temperature(pred.probs, temperature))
    table = predictions_table(pred.file_ids, pred.probs, None, trained_cfg.evaluation.ahf_low_threshold,
                              trained_cfg.evaluation.ahf_high_threshold)
    return pred, table


@dataclass
class EnsemblePrediction:
    table: pd.DataFrame  # what was written: the predictions of the ensemble (or of the one checkpoint)
    members: dict[str, pd.DataFrame]  # member name -> its own predictions table, same images


def predict_ensemble(cfg: Config, checkpoints: Sequence[Path], source: str | Path,
                     output: str | Path) -> EnsemblePrediction:
    """Score the images of `source` with every checkpoint and write their combined predictions
    (`ensemble_average`) to `output` (CSV); each member's own stored temperature applies with
    [Evaluation] calibrate = true."""
    members = [score_dataset(*prepare_scoring(cfg, c, source))[0] for c in checkpoints]
    members = aligned(members)  # every member skips the same unreadable files
    low, high = cfg.evaluation.ahf_low_threshold, cfg.evaluation.ahf_high_threshold
    probs = combine_probabilities([m.probs for m in members], ensemble_average(cfg))
    table = predictions_table(members[0].file_ids, probs, None, low, high)
    atomic_write_csv(Path(output), table)
    tables = {name: predictions_table(m.file_ids, m.probs, None, low, high)
              for name, m in zip(member_names([Path(c) for c in checkpoints]), members)}
    return EnsemblePrediction(table, tables)


def predict_images(cfg: Config, checkpoint: str | Path, source: str | Path, output: str | Path) -> pd.DataFrame:
    """Score the images of `source` with one checkpoint into `output` (CSV); returns the table written."""
    return predict_ensemble(cfg, [Path(checkpoint)], source, output).table
