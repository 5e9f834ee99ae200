"""Read and validate the labels CSV (legacy layout: FileID;right_sup;...;left_inf;csi)."""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.zones import UNKNOWN, ZONES, csi_from_scores
from src.utils.errors import DataError
from src.utils.logging import logger

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
_SEPARATORS = (";", ",", "\t")
_SPREADSHEET_FLOAT = re.compile(r"(\d+)\.0+")


def _shown(text: str, limit: int = 80) -> str:
    """`text` fit for a one-line message: whitespace runs (quoted line breaks) as one space, cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def decode_csv(path: Path, encoding: str = "auto") -> str:
    """The text of the CSV at `path`. auto: UTF-8 (a BOM is dropped), UTF-16 when it starts with a
    BOM, else Windows-1252 (Latin-1 for bytes it leaves undefined), which is what spreadsheets on
    Windows write, with a warning naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc.strerror})") from None
    if encoding != "auto":
        try:
            return data.decode(encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: byte {exc.start} is not valid {encoding} text; set [Data] csv_encoding "
                            "to the file's encoding (or auto)") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise DataError(f"{path}: starts with a UTF-16 BOM but is not valid UTF-16 text") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text, used = data.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:
        text, used = data.decode("latin-1"), "Latin-1"
    logger.warning(f"{path}: not UTF-8 text; read as {used} (set [Data] csv_encoding to choose the encoding)")
    return text


def detect_separator(header: str) -> str:
    """';', ',' or tab: whichever splits the header line (quotes respected) into most columns."""
    counts = {sep: len(next(csv.reader([header], delimiter=sep), [])) for sep in _SEPARATORS}
    return max(_SEPARATORS, key=lambda sep: counts[sep])  # ties keep the first, ';' (the legacy layout)


def normalize_file_id(raw: str) -> str:
    """'12345.0' (a spreadsheet's float) -> '12345'; every other ID is kept as written ('00042')."""
    text = raw.strip()
    match = _SPREADSHEET_FLOAT.fullmatch(text)
    return match.group(1) if match else text


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


def _read_csv(path: Path, separator: str, encoding: str,
              required: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The CSV as strings indexed by line number, and lower-case column name -> actual name.

    Rows whose cells are all empty (blank lines, spreadsheets' ';;;;;;' rows) are dropped; checks
    the header and the number of fields of each row."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected the labels CSV file")
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    text = decode_csv(path, encoding)
    if not text.strip():
        raise DataError(f"{path}: the CSV file is empty; expected a header line with {', '.join(required)}")
    separator = separator or detect_separator(text.lstrip("\r\n").splitlines()[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    rows, lines, end = [], [], 0
    try:
        for row in reader:
            lines.append(end + 1)  # a quoted field may span lines: count from where the row starts
            rows.append(row)
            end = reader.line_num
    except csv.Error as exc:
        raise DataError(f"{path}: line {end + 1}: not readable as CSV with separator {separator!r} ({exc})") from None
    header_at = next((i for i, row in enumerate(rows) if any(cell.strip() for cell in row)), None)
    if header_at is None:
        raise DataError(f"{path}: the CSV file has no header line; expected one with {', '.join(required)}")
    header = [cell.strip() for cell in rows[header_at]]
    by_lower: dict[str, str] = {}
    for name in header:
        if name and name.lower() in by_lower:
            raise DataError(f"{path}: column {_shown(name)} appears twice in the header (line {lines[header_at]})")
        by_lower[name.lower()] = name
    missing = [c for c in required if c not in by_lower]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {_shown(', '.join(header))} "
                        f"(separator {separator!r}; set [Data] csv_separator if that is wrong)")
    width = len(header)
    kept, kept_lines = [], []
    for row, line in zip(rows[header_at + 1:], lines[header_at + 1:]):
        if not any(cell.strip() for cell in row):
            continue
        if any(cell.strip() for cell in row[width:]):
            raise DataError(f"{path}: line {line}: {len(row)} fields but the header has {width} "
                            f"(separator {separator!r}; quote fields that contain it)")
        kept.append(row[:width] + [""] * (width - len(row)))
        kept_lines.append(line)
    return pd.DataFrame(kept, columns=header, index=kept_lines, dtype=str), by_lower


def _file_ids(raw: pd.DataFrame, by_lower: dict[str, str], path: Path) -> pd.DataFrame:
    """FileID (and path, when present) of each row; an empty FileID is refused."""
    table = pd.DataFrame({"FileID": [normalize_file_id(v) for v in raw[by_lower["fileid"]]]})
    empty = np.flatnonzero(table["FileID"] == "")
    if len(empty):
        raise DataError(f"{path}: line {raw.index[empty[0]]}: empty FileID")
    if "path" in by_lower:
        table["path"] = raw[by_lower["path"]].str.strip().to_numpy()
    return table


def read_file_ids(path: str | Path, separator: str = "", encoding: str = "auto") -> pd.DataFrame:
    """FileID (and path, when present) of a CSV in the labels layout; score columns are ignored."""
    raw, by_lower = _read_csv(Path(path), separator, encoding, ("fileid",))
    return _file_ids(raw, by_lower, Path(path))


def read_labels(path: str | Path, separator: str = "", encoding: str = "auto") -> pd.DataFrame:
    """Labels as a DataFrame: FileID (str), the six zones (int 0-4), csi, and the optional
    PatientID, split and path columns when the file has them. Raises DataError naming the line."""
    path = Path(path)
    raw, by_lower = _read_csv(path, separator, encoding, ("fileid",) + ZONES)
    table = _file_ids(raw, by_lower, path)
    lines = raw.index.to_numpy()
    scores = np.empty((len(raw), len(ZONES)), dtype=np.int64)
    for z, zone in enumerate(ZONES):
        for row, value in enumerate(raw[by_lower[zone]]):
            where = f"{path}: line {lines[row]} (FileID {_shown(table['FileID'].iat[row])}), column {zone}"
            scores[row, z] = _parse_score(value, where)
        table[zone] = scores[:, z]
    table["csi"] = csi_from_scores(scores)

    duplicated = table["FileID"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = table["FileID"][duplicated].iloc[0]
        listed = ", ".join(str(n) for n in lines[duplicated & (table["FileID"] == first).to_numpy()][:10])
        raise DataError(f"{path}: FileID {_shown(first)} appears more than once (lines {listed})")

    if "patientid" in by_lower:
        table["PatientID"] = raw[by_lower["patientid"]].str.strip().to_numpy()
    if "split" in by_lower:
        table["split"] = [_parse_split(v, f"{path}: line {line} (FileID {_shown(file_id)})")
                          for v, line, file_id in zip(raw[by_lower["split"]], lines, table["FileID"])]
    return table


def _parse_split(value: str, where: str) -> str:
    name = _SPLIT_ALIASES.get(value.strip().lower())
    if name is None:
        raise DataError(f"{where}, column split: {value!r} is not a split; allowed train, val, test")
    return name
