"""predict: score new images with a trained checkpoint, using its recorded preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.config.schema import Config
from src.data.cache import CacheSettings, build_cache
from src.data.dataset import CSIDataset, make_loader
from src.data.labels import read_file_ids
from src.data.load import report_unusable
from src.data.locate import locate_images
from src.data.preprocess import normalization_stats
from src.data.readers import SUPPORTED_EXTENSIONS, file_extension
from src.data.zones import UNKNOWN, ZONES
from src.evaluation.evaluate import loop_settings
from src.evaluation.predictions import predictions_table
from src.models.factory import load_trained_model
from src.training.loop import predict_batches
from src.utils.errors import DataError
from src.utils.io import atomic_write_with


def collect_inputs(cfg: Config, source: Path) -> pd.DataFrame:
    """FileID and path of each image to score: every supported image of a directory, or the rows of
    a CSV in the labels layout resolved through [Data] image_dir like training does."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and file_extension(p) in SUPPORTED_EXTENSIONS)
        if not files:
            raise DataError(f"{source}: no image with a supported extension ({', '.join(SUPPORTED_EXTENSIONS)})")
        return pd.DataFrame({"FileID": [p.name[: -len(file_extension(p))] for p in files],
                             "path": [str(p) for p in files]})
    if not source.is_file():
        raise DataError(f"{source}: --input is neither a directory nor a CSV file")
    table = read_file_ids(source, cfg.data.csv_separator)
    paths = locate_images(table, cfg.data.image_dir, cfg.data.image_extension)
    return table.assign(path=[str(p) if p else "" for p in paths])


def predict_images(cfg: Config, checkpoint: str | Path, source: str | Path, output: str | Path) -> pd.DataFrame:
    """Score the images of `source` into `output` (CSV); returns the table written."""
    model, trained_cfg, _ = load_trained_model(cfg, Path(checkpoint))
    inputs = collect_inputs(cfg, Path(source))
    present = inputs[inputs["path"] != ""].reset_index(drop=True)
    cache = build_cache([Path(p) for p in present["path"]], CacheSettings.from_config(trained_cfg.data),
                        cfg.data.cache_dir)
    absent = inputs.loc[inputs["path"] == "", "FileID"]
    problems = pd.DataFrame({
        "FileID": [present["FileID"][i] for i in cache.failures] + absent.tolist(),
        "reason": list(cache.failures.values()) + [f"no file in {cfg.data.image_dir}"] * len(absent)})
    report_unusable(source, problems, cfg.data.on_missing)
    rows = [i for i in range(len(present)) if i not in cache.failures]
    if not rows:
        raise DataError(f"{source}: no image could be scored")
    mean, std = normalization_stats(trained_cfg.data.normalization, trained_cfg.data.normalization_mean,
                                    trained_cfg.data.normalization_std)
    dataset = CSIDataset(cache.images, rows, np.full((len(rows), len(ZONES)), UNKNOWN),
                         present["FileID"].iloc[rows].tolist(), mean, std)
    device, settings = loop_settings(trained_cfg, model)
    pred = predict_batches(model, make_loader(dataset, trained_cfg.evaluation.batch_size, shuffle=False),
                           device, settings)
    table = predictions_table(pred.file_ids, pred.probs, None, trained_cfg.evaluation.ahf_low_threshold,
                              trained_cfg.evaluation.ahf_high_threshold)
    atomic_write_with(Path(output), lambda h: table.to_csv(h, index=False), binary=False)
    return table
