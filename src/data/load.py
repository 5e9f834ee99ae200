"""load_data: labels + image files + cache + split -> datasets, the one entry point of src.data."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from src.config.schema import Config, DataConfig
from src.data.cache import CacheSettings, ImageCache, build_cache, prebuild_part
from src.data.label_sources import read_label_table
from src.data.labels import SPLITS
from src.data.locate import locate_images
from src.data.masks import ZoneMaps, build_zone_maps
from src.data.sanity import check_split_scores, too_small, too_small_message, warn_constant_images
from src.data.split import assign_splits
from src.data.zones import ZONES
from src.utils.errors import DataError
from src.utils.logging import logger

if TYPE_CHECKING:
    from src.data.dataset import CSIDataset

_LISTED = 10  # FileIDs named in an error message before "and N more"


@dataclass
class DataBundle:
    table: pd.DataFrame  # usable rows: FileID, zones, csi, [PatientID], split, path, cache_index
    skipped: pd.DataFrame  # FileID, reason: rows left out under on_missing = skip
    cache: ImageCache
    zones: ZoneMaps | None = None  # with [Data] mask_dir: each cached image's zone map

    def labels(self, split: str | None = None) -> np.ndarray:
        rows = self.table if split is None else self.table[self.table["split"] == split]
        return rows[list(ZONES)].to_numpy(dtype=np.int64)

    def dataset(self, split: str) -> CSIDataset:
        from src.data.dataset import CSIDataset  # torch (2 s to import): not for modes that only check data

        rows = self.table[self.table["split"] == split]
        return CSIDataset(self.cache.images, rows["cache_index"].to_numpy(), self.labels(split),
                          rows["FileID"].tolist(), self.zones)

    def with_splits(self, splits: Sequence[str]) -> DataBundle:
        """The same images and labels with another split per row (e.g. a cross-validation fold's)."""
        return dataclasses.replace(self, table=self.table.assign(split=np.asarray(splits, dtype=object)))

    def split_table(self) -> pd.DataFrame:
        """What split.csv holds: FileID, split (and PatientID when known)."""
        columns = ["FileID", "split"] + (["PatientID"] if "PatientID" in self.table else [])
        return self.table[columns]


def _report_unusable(source: str | Path, problems: pd.DataFrame, on_missing: str) -> None:
    """Stop on missing or unreadable images (FileID, reason rows), or warn that they are skipped."""
    if problems.empty:
        return
    listed = ", ".join(f"{r.FileID} ({r.reason})" for r in problems.head(_LISTED).itertuples())
    more = f" and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
    summary = f"{source}: {len(problems)} image(s) missing or unreadable: {listed}{more}"
    if on_missing == "error":
        raise DataError(f"{summary}; fix them or set [Data] on_missing = skip")
    logger.warning(f"{summary}; skipped ([Data] on_missing = skip)")


def _skipped(file_ids: Sequence[str], reasons: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"FileID": [file_ids[i] for i in sorted(reasons)],
                         "reason": [reasons[i] for i in sorted(reasons)]})


def cache_images(file_ids: Sequence[str], paths: Sequence[Path | None], data: DataConfig,
                 source: str | Path) -> tuple[ImageCache, np.ndarray, pd.DataFrame]:
    """Decode the images that exist into the cache (preprocessed per `data`) and report the missing
    or unreadable ones per `data.on_missing`. Returns the cache, each row's index into it (-1 for a
    row without a usable image) and the skipped rows (FileID, reason). `source` names the rows'
    origin in messages."""
    found = [i for i, p in enumerate(paths) if p is not None]
    cache = build_cache([paths[i] for i in found], CacheSettings.from_config(data), data.cache_dir)
    reasons = {i: f"no file in {data.image_dir}" for i, p in enumerate(paths) if p is None}
    reasons.update({found[k]: why for k, why in cache.failures.items()})
    _report_unusable(source, _skipped(file_ids, reasons), data.on_missing)
    small = np.flatnonzero(too_small(cache.original_shapes, data.image_size))
    if len(small):  # a thumbnail decodes, but is no radiograph to score: refused like an unreadable file
        message = too_small_message(source, [file_ids[found[k]] for k in small], cache.original_shapes[small],
                                    data.image_size)
        if data.on_missing == "error":
            raise DataError(f"{message} fix them or set [Data] on_missing = skip")
        logger.warning(f"{message} skipped ([Data] on_missing = skip)")
        reasons.update({found[k]: "far smaller than image_size" for k in small})
    cache_index = np.full(len(paths), -1)
    cache_index[found] = np.arange(len(found))
    cache_index[sorted(reasons)] = -1
    usable = np.flatnonzero(cache_index >= 0)
    warn_constant_images(cache.images, cache_index[usable], [file_ids[i] for i in usable], source)
    skipped = _skipped(file_ids, reasons)
    return cache, cache_index, skipped


def read_split_csv(path: str | Path) -> pd.Series:
    """FileID -> split from a run's split.csv, checked: readable, FileID and split columns, split
    names train/val/test, each FileID once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        split = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable split file ({' '.join(str(exc).split())})") from None
    if not {"FileID", "split"} <= set(split.columns):
        raise DataError(f"{path}: expected columns FileID and split, found {', '.join(map(str, split.columns))}")
    bad = split.index[~split["split"].isin(SPLITS)]
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 2} (FileID {split.at[bad[0], 'FileID']}): split "
                        f"{split.at[bad[0], 'split']!r} is not one of {', '.join(SPLITS)}")
    repeated = split.index[split["FileID"].duplicated()]
    if len(repeated):
        raise DataError(f"{path}: line {repeated[0] + 2}: FileID {split.at[repeated[0], 'FileID']} appears twice")
    return split.set_index("FileID")["split"]


def _check_splits(table: pd.DataFrame, origin: str | Path) -> None:
    """Training needs images in train and val; say which split came out empty and why."""
    counts = table["split"].value_counts()
    empty = [name for name in ("train", "val") if not counts.get(name, 0)]
    if empty:
        raise DataError(f"{origin}: the {' and '.join(empty)} split(s) would be empty ({len(table)} usable "
                        f"image(s): {', '.join(f'{n} {counts.get(n, 0)}' for n in SPLITS)}); add images, "
                        "fix the split column or change [Data] train_fraction/val_fraction")


def labelled_images(data: DataConfig, labels: Sequence[str | Path] = (), outcome_column: str = ""
                    ) -> tuple[pd.DataFrame, list[Path | None]]:
    """The labels table of `labels` (default [Data] labels_csv; several: one file per reader) and
    each row's image file in [Data] image_dir (None where there is none)."""
    labels = list(labels) or [data.labels_csv]
    table = read_label_table(labels, data, outcome_column)
    return table, locate_images(table, data.image_dir, data.image_extension, data.recursive,
                                data.allow_outside_paths, labels[0])


def prebuild_cache_part(data: DataConfig, part: int, parts: int) -> tuple[int, int]:
    """Decode part `part` (1..parts) of the labelled images into the cache, as one of `parts` jobs
    that prebuild it together: (images decoded now, images still missing from the cache)."""
    _, paths = labelled_images(data)
    return prebuild_part([p for p in paths if p is not None], CacheSettings.from_config(data), data.cache_dir,
                         part - 1, parts)


def load_data(cfg: Config, split_csv: str | Path | None = None, with_outcome: bool = False) -> DataBundle:
    """Read labels, find and cache every image, and assign splits (or take them from `split_csv`);
    `with_outcome` (evaluation) also reads [Evaluation] outcome_column."""
    data = cfg.data
    table, paths = labelled_images(data, outcome_column=cfg.evaluation.outcome_column if with_outcome else "")
    cache, cache_index, skipped = cache_images(table["FileID"].tolist(), paths, data, data.labels_csv)
    table = table.assign(path=[str(p) if p else "" for p in paths], cache_index=cache_index)
    table = table[cache_index >= 0].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{data.labels_csv}: no usable image")
    zones = (build_zone_maps(cache, table["FileID"].tolist(), table["cache_index"].to_numpy(), data,
                             cfg.model.zone_split) if data.mask_dir else None)

    if split_csv is not None:
        saved = read_split_csv(split_csv)
        table = table[table["FileID"].isin(saved.index)].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{split_csv}: none of its FileIDs has a usable image in {data.labels_csv}")
        table["split"] = saved.loc[table["FileID"]].to_numpy()
    else:
        fractions = (data.train_fraction, data.val_fraction, data.test_fraction)
        table["split"] = assign_splits(table, fractions, cfg.training.seed).to_numpy()
        _check_splits(table, data.labels_csv)
    check_split_scores(table, split_csv or data.labels_csv)
    return DataBundle(table=table, skipped=skipped, cache=cache, zones=zones)
