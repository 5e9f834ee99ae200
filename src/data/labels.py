"""Read and validate the labels CSV (legacy layout: FileID;right_sup;...;left_inf;csi)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.zones import UNKNOWN, ZONES, csi_from_scores
from src.utils.errors import DataError

OPTIONAL_COLUMNS = ("csi", "PatientID", "split", "path")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


def detect_separator(path: Path) -> str:
    """';' or ',' — whichever splits the header line into more columns."""
    with open(path, encoding="utf-8-sig") as handle:
        header = handle.readline()
    return ";" if header.count(";") >= header.count(",") else ","


def normalize_file_id(raw: str) -> str:
    """'12345.0' (a spreadsheet's float) -> '12345'; other IDs are kept as written."""
    text = raw.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer() and "e" not in text.lower():
        return str(int(number))
    return text


def _parse_score(value: str, where: str) -> int:
    text = value.strip()
    if text == "" or text.lower() in ("nan", "na", "n/a", "none"):
        return UNKNOWN
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer() or not 0 <= number <= UNKNOWN:
        raise DataError(f"{where}: {value!r} is not a zone score; allowed 0, 1, 2, 3, 4 (Unknown) or empty")
    return int(number)


def _read_csv(path: Path, separator: str, required: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The CSV as strings, and lower-case column name -> actual name; checks required columns."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    separator = separator or detect_separator(path)
    try:
        raw = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV with separator {separator!r}: {str(exc).strip()}") from None
    by_lower = {c.strip().lower(): c for c in raw.columns}
    missing = [c for c in required if c not in by_lower]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, raw.columns))} "
            f"(separator {separator!r})"
        )
    return raw, by_lower


def read_file_ids(path: str | Path, separator: str = "") -> pd.DataFrame:
    """FileID (and path, when present) of a CSV in the labels layout; score columns are ignored."""
    raw, by_lower = _read_csv(Path(path), separator, ("fileid",))
    table = pd.DataFrame({"FileID": [normalize_file_id(v) for v in raw[by_lower["fileid"]]]})
    if "path" in by_lower:
        table["path"] = raw[by_lower["path"]].str.strip()
    return table


def read_labels(path: str | Path, separator: str = "") -> pd.DataFrame:
    """Labels as a DataFrame: FileID (str), the six zones (int 0-4), csi, and the optional
    PatientID, split and path columns when the file has them. Raises DataError naming the row."""
    path = Path(path)
    raw, by_lower = _read_csv(path, separator, ("fileid",) + ZONES)
    table = pd.DataFrame({"FileID": [normalize_file_id(v) for v in raw[by_lower["fileid"]]]})
    scores = np.empty((len(raw), len(ZONES)), dtype=np.int64)
    for row, file_id in enumerate(table["FileID"]):
        line = row + 2  # header is line 1
        if not file_id:
            raise DataError(f"{path}: line {line}: empty FileID")
        for z, zone in enumerate(ZONES):
            where = f"{path}: line {line} (FileID {file_id}), column {zone}"
            scores[row, z] = _parse_score(raw.iat[row, raw.columns.get_loc(by_lower[zone])], where)
    for z, zone in enumerate(ZONES):
        table[zone] = scores[:, z]
    table["csi"] = csi_from_scores(scores)

    duplicated = table["FileID"].duplicated(keep=False)
    if duplicated.any():
        lines = [str(i + 2) for i in np.flatnonzero(duplicated)]
        first = table["FileID"][duplicated].iloc[0]
        raise DataError(f"{path}: FileID {first} appears more than once (lines {', '.join(lines[:10])})")

    if "patientid" in by_lower:
        table["PatientID"] = raw[by_lower["patientid"]].str.strip()
    if "split" in by_lower:
        table["split"] = [_parse_split(v, f"{path}: line {i + 2}") for i, v in enumerate(raw[by_lower["split"]])]
    if "path" in by_lower:
        table["path"] = raw[by_lower["path"]].str.strip()
    return table


def _parse_split(value: str, where: str) -> str:
    name = _SPLIT_ALIASES.get(value.strip().lower())
    if name is None:
        raise DataError(f"{where}, column split: {value!r} is not a split; allowed train, val, test")
    return name
