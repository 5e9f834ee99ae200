"""The labels of a data set from one file or several (one per reader), in [Data] label_format.

Every format gives the table read_labels does. Several files are several readers: each file's
scores become the reader columns `<zone>@<file stem>` (see src/data/consensus.py), a reader who
has no row for an image did not read it, and the zones are the readers' consensus; the other
columns (PatientID, split, path, outcome) come from the first file that has the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from src.config.schema import DataConfig
from src.data.brixia import read_brixia
from src.data.consensus import NOT_READ, consensus, reader_column, reader_names
from src.data.labels import read_labels
from src.data.zones import UNKNOWN, ZONES, csi_from_scores
from src.utils.errors import DataError


def read_label_file(path: str | Path, data: DataConfig, outcome_column: str = "") -> pd.DataFrame:
    read = read_brixia if data.label_format == "brixia" else read_labels
    return read(path, data.csv_separator, data.csv_encoding, data.consensus, outcome_column)


def _file_reader_names(paths: Sequence[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.stem}" for p in paths]
    if len(set(names)) < len(names):
        raise DataError(f"{', '.join(map(str, paths))}: the same labels file given twice; one file per reader")
    return names


def merge_readers(tables: Sequence[pd.DataFrame], paths: Sequence[Path], rule: str) -> pd.DataFrame:
    """One table of several readers' files (each with one score set): see the module docstring."""
    for table, path in zip(tables, paths):
        if reader_names(table):
            raise DataError(f"{path}: holds several readers' scores ({', '.join(reader_names(table))}) itself; "
                            "pass a file of several readers alone, or one file per reader")
    names = _file_reader_names(paths)
    order = pd.Index(pd.concat([t["FileID"] for t in tables]).drop_duplicates())
    others = [c for c in dict.fromkeys(c for t in tables for c in t.columns) if c not in ("FileID", *ZONES, "csi")]
    merged = pd.DataFrame({"FileID": order.to_numpy(dtype=object)})
    scores = np.full((len(tables), len(order), len(ZONES)), NOT_READ, dtype=np.int64)
    for r, table in enumerate(tables):
        rows = order.get_indexer(table["FileID"])
        scores[r, rows] = table[list(ZONES)].to_numpy(dtype=np.int64)
    target = consensus(scores, rule)
    for z, zone in enumerate(ZONES):
        merged[zone] = target[:, z]
    merged["csi"] = csi_from_scores(target)
    for r, name in enumerate(names):
        for z, zone in enumerate(ZONES):
            merged[reader_column(zone, name)] = scores[r, :, z]
    for column in others:
        values = pd.Series([None] * len(order), dtype=object)
        for table in tables:
            if column in table:
                theirs = pd.Series(table[column].to_numpy(dtype=object), index=order.get_indexer(table["FileID"]))
                values = values.combine_first(theirs)
        # Where no file gives a value: NaN for the outcome (not known), "" for text (no PatientID, split to assign).
        merged[column] = values.astype(float) if column == "outcome" else values.fillna("").to_numpy()
    return merged


def check_known_scores(table: pd.DataFrame, source: str) -> None:
    """Refuse labels without a single known zone score: nothing to train on or to evaluate."""
    if len(table) and (table[list(ZONES)].to_numpy() == UNKNOWN).all():
        raise DataError(f"{source}: every zone score of its {len(table)} row(s) is Unknown (empty, 4 or NaN); "
                        "nothing to train on or evaluate: check the zone columns")


def read_label_table(paths: Sequence[str | Path], data: DataConfig, outcome_column: str = "") -> pd.DataFrame:
    """The labels of `paths` (one file, or one per reader) in `data.label_format`, checked to hold a known score."""
    paths = [Path(p) for p in paths]
    tables = [read_label_file(p, data, outcome_column) for p in paths]
    table = tables[0] if len(tables) == 1 else merge_readers(tables, paths, data.consensus)
    check_known_scores(table, ", ".join(map(str, paths)))
    return table
