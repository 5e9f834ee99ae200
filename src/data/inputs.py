"""The images to score: found from a folder or a CSV, and decoded into the cache.

Torch-free, like the rest of the path from files to pixels: `predict --runtime onnx` runs it where
PyTorch is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.config.schema import Config, DataConfig
from src.data.cache import ImageCache
from src.data.labels import read_file_ids
from src.data.load import cache_images
from src.data.locate import index_directory, locate_images
from src.data.readers import SUPPORTED_EXTENSIONS
from src.utils.errors import DataError


def collect_inputs(cfg: Config, source: Path) -> pd.DataFrame:
    """FileID and path of each image to score: every supported image of a directory, or the rows of
    a CSV in the labels layout resolved through [Data] image_dir like training does."""
    if source.is_dir():
        files = sorted(index_directory(source, cfg.data.recursive).items())
        if not files:
            raise DataError(f"{source}: no image with a supported extension ({', '.join(SUPPORTED_EXTENSIONS)}) "
                            "and no DICOM file")
        return pd.DataFrame({"FileID": [stem for stem, _ in files], "path": [str(p) for _, p in files]})
    if not source.is_file():
        raise DataError(f"{source}: --input is neither a directory nor a CSV file")
    table = read_file_ids(source, cfg.data.csv_separator, cfg.data.csv_encoding)
    paths = locate_images(table, cfg.data.image_dir, cfg.data.image_extension, cfg.data.recursive,
                          cfg.data.allow_outside_paths, source)
    return table.assign(path=[str(p) if p else "" for p in paths])


def cache_inputs(cfg: Config, data: DataConfig, source: str | Path) -> tuple[pd.DataFrame, ImageCache, np.ndarray]:
    """The images of `source` decoded per `data` (a model's preprocessing): the usable rows (FileID,
    path), the cache and each usable row's index into it."""
    inputs = collect_inputs(cfg, Path(source))
    cache, cache_index, _ = cache_images(inputs["FileID"].tolist(),
                                         [Path(p) if p else None for p in inputs["path"]], data, source)
    usable = cache_index >= 0
    if not usable.any():
        raise DataError(f"{source}: no image could be scored")
    return inputs[usable].reset_index(drop=True), cache, cache_index[usable]
