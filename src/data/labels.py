"""Read and validate the labels CSV (legacy layout: FileID;right_sup;...;left_inf;csi).

Several readers' scores come as `<zone>@<reader>` columns (see src/data/consensus.py), which then
make the six zone columns by [Data] consensus; an outcome column ([Evaluation] outcome_column) is
read as 0/1 (NaN where not known)."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.consensus import READER_SEPARATOR, consensus, reader_column
from src.data.zones import UNKNOWN, ZONES, csi_from_scores
from src.utils.errors import DataError
from src.utils.logging import logger

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
_SEPARATORS = (";", ",", "\t")
_SPREADSHEET_FLOAT = re.compile(r"(\d+)\.0+")
_UNKNOWN_WORDS = ("nan", "na", "n/a", "none")
_OUTCOME_WORDS = {"0": 0.0, "1": 1.0, "false": 0.0, "true": 1.0, "no": 0.0, "yes": 1.0, "n": 0.0, "y": 1.0}
_SCORE_TEXTS = tuple(str(score) for score in range(UNKNOWN + 1))
_PLAIN_SCORES = pd.Index([*_SCORE_TEXTS, ""])  # position = score, and "" (last) is Unknown


def shown(text: str, limit: int = 80) -> str:
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


def normalize_file_ids(raw: pd.Series) -> pd.Series:
    """'12345.0' (a spreadsheet's float) -> '12345'; every other ID is kept as written ('00042'),
    without surrounding whitespace."""
    ids = raw.str.strip()
    dotted = ids.str.contains(".", regex=False).to_numpy()  # the regular expression only where it may match
    ids[dotted] = ids[dotted].str.replace(rf"\A{_SPREADSHEET_FLOAT.pattern}\Z", r"\1", regex=True)
    return ids


def normalize_file_id(raw: str) -> str:
    return normalize_file_ids(pd.Series([raw], dtype=object)).iat[0]


def _parse_score(value: str, where: Callable[[], str]) -> int:
    text = value.strip()
    if text == "" or text.lower() in _UNKNOWN_WORDS:
        return UNKNOWN
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer() or not 0 <= number <= UNKNOWN:
        raise DataError(f"{where()}: {value!r} is not a zone score; allowed 0, 1, 2, 3, 4 (Unknown) or empty")
    return int(number)


def _parse_scores(cells: pd.Series, where: Callable[[int], str]) -> np.ndarray:
    """_parse_score of every cell, vectorised: numbers and empty cells here, and the few others
    (Unknown words, errors) through _parse_score itself; `where(row)` names a cell in an error."""
    numbers = _PLAIN_SCORES.get_indexer(cells).astype(float)  # a hash lookup: most cells are one of these
    numbers[numbers == len(_SCORE_TEXTS)] = UNKNOWN
    other = np.flatnonzero(numbers < 0)
    numbers[other] = pd.to_numeric(cells.iloc[other], errors="coerce").to_numpy(dtype=float)
    doubtful = np.flatnonzero(~((numbers >= 0) & (numbers <= UNKNOWN) & (numbers == np.round(numbers))))
    for row in doubtful:
        numbers[row] = _parse_score(cells.iat[row], lambda row=row: where(row))
    return numbers.astype(np.int64)


def read_csv_table(path: Path, separator: str, encoding: str,
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
    separator = separator or detect_separator(re.split(r"\r\n|\r|\n", text.lstrip("\r\n"), maxsplit=1)[0])
    table = _read_uniform(text, separator, path, required)
    return table if table is not None else _read_careful(text, separator, path, required)


def _columns(header: list[str], line: int, path: Path, required: tuple[str, ...],
             separator: str) -> dict[str, str]:
    """Lower-case column name -> name as written; refuses a repeated or missing column."""
    by_lower: dict[str, str] = {}
    for name in header:
        if name and name.lower() in by_lower:
            raise DataError(f"{path}: column {shown(name)} appears twice in the header (line {line})")
        by_lower[name.lower()] = name
    missing = [c for c in required if c not in by_lower]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {shown(', '.join(header))} "
                        f"(separator {separator!r}; set [Data] csv_separator if that is wrong)")
    return by_lower


def _read_uniform(text: str, separator: str, path: Path,
                  required: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, str]] | None:
    """read_csv_table by pandas' C parser, for the common file (large ones among them): header on line 1,
    no row longer than it, no line break inside a quoted field. None for any other file, which
    _read_careful reads (and words the errors of)."""
    try:
        grid = pd.read_csv(io.StringIO(text), sep=separator, header=None, dtype=str, na_filter=False,
                           skip_blank_lines=False, engine="c", quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, ValueError):
        return None
    lines = text.count("\n") + (not text.endswith("\n"))
    if len(grid) != lines or not len(grid):
        return None  # a quoted line break (or a lone CR line end): row numbers are not line numbers
    header = [cell.strip() for cell in grid.iloc[0]]
    if not any(header):
        return None
    by_lower = _columns(header, 1, path, required, separator)
    # A blank row (empty or whitespace cells only) has a blank first cell: check those few one by one.
    blank = np.zeros(len(grid) - 1, dtype=bool)
    for row in np.flatnonzero((grid.iloc[1:, 0].str.strip() == "").to_numpy()):
        blank[row] = not any(cell.strip() for cell in grid.iloc[row + 1])
    keep = np.flatnonzero(~blank) + 1
    body = grid.iloc[keep] if blank.any() else grid.iloc[1:]
    body.columns, body.index = header, keep + 1
    return body, by_lower


def _read_careful(text: str, separator: str, path: Path,
                  required: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, str]]:
    """read_csv_table row by row with the csv module: any layout, each error with its line."""
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
    by_lower = _columns(header, lines[header_at], path, required, separator)
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
    table = pd.DataFrame({"FileID": normalize_file_ids(raw[by_lower["fileid"]]).to_numpy(dtype=object)})
    empty = np.flatnonzero(table["FileID"] == "")
    if len(empty):
        raise DataError(f"{path}: line {raw.index[empty[0]]}: empty FileID")
    if "path" in by_lower:
        table["path"] = raw[by_lower["path"]].str.strip().to_numpy()
    return table


def read_file_ids(path: str | Path, separator: str = "", encoding: str = "auto") -> pd.DataFrame:
    """FileID (and path, when present) of a CSV in the labels layout; score columns are ignored."""
    raw, by_lower = read_csv_table(Path(path), separator, encoding, ("fileid",))
    return _file_ids(raw, by_lower, Path(path))


def _score_columns(header: list[str], path: Path) -> tuple[bool, dict[str, list[str]]]:
    """Whether the six plain zone columns are there, and reader -> its six `<zone>@<reader>` columns (as
    written), in header order. Refuses a reader column of another zone and a reader without all six."""
    lower = {name.lower(): name for name in header}
    readers: dict[str, dict[str, str]] = {}
    for name in header:
        zone, separator, reader = name.partition(READER_SEPARATOR)
        if not separator:
            continue
        if zone.lower() not in ZONES or not reader.strip():
            raise DataError(f"{path}: column {shown(name)} is not <zone>@<reader>: zone {shown(zone)!r} is not one "
                            f"of {', '.join(ZONES)}" if zone.lower() not in ZONES else
                            f"{path}: column {shown(name)} names no reader after '{READER_SEPARATOR}'")
        readers.setdefault(reader.strip(), {})[zone.lower()] = name
    for reader, columns in readers.items():
        missing = [zone for zone in ZONES if zone not in columns]
        if missing:
            raise DataError(f"{path}: reader {shown(reader)} has no column(s) "
                            f"{', '.join(reader_column(z, reader) for z in missing)}; each reader scores all six zones")
    plain = [zone for zone in ZONES if zone in lower]
    if readers and plain:
        raise DataError(f"{path}: has both zone column {plain[0]} and readers' columns "
                        f"({', '.join(readers)}); keep one: the readers' consensus ([Data] consensus) is the target")
    if not readers and len(plain) < len(ZONES):
        missing = [zone for zone in ZONES if zone not in lower]
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {shown(', '.join(header))} (or give "
                        "every reader's scores as <zone>@<reader> columns; set [Data] csv_separator if the header "
                        "was not split right)")
    return not readers, {reader: [columns[z] for z in ZONES] for reader, columns in readers.items()}


def parse_score_columns(raw: pd.DataFrame, columns: list[str], names: list[str], path: Path,
                        file_ids: pd.Series) -> np.ndarray:
    """[N, 6] scores of six columns of `raw` (0-4; empty, NaN words: Unknown); `names` in messages."""
    lines = raw.index.to_numpy()
    scores = np.empty((len(raw), len(columns)), dtype=np.int64)
    for z, (column, name) in enumerate(zip(columns, names)):
        scores[:, z] = _parse_scores(raw[column], lambda row, name=name: (
            f"{path}: line {lines[row]} (FileID {shown(file_ids.iat[row])}), column {name}"))
    return scores


def parse_outcome(cells: pd.Series, where: Callable[[int], str], column: str) -> np.ndarray:
    """1.0 / 0.0 per cell of a binary outcome column (0/1, true/false, yes/no, y/n, any case; a
    spreadsheet's 1.0), NaN where empty or a NaN word (not known)."""
    text = cells.str.strip().str.lower().str.replace(rf"\A{_SPREADSHEET_FLOAT.pattern}\Z", r"\1", regex=True)
    values = text.map(_OUTCOME_WORDS).to_numpy(dtype=float)
    missing = (text == "") | text.isin(_UNKNOWN_WORDS)
    bad = np.flatnonzero(np.isnan(values) & ~missing.to_numpy())
    if len(bad):
        raise DataError(f"{where(bad[0])}, column {column}: {cells.iat[bad[0]]!r} is not a binary outcome; allowed "
                        "0 or 1 (also true/false, yes/no) or empty for not known ([Evaluation] outcome_column)")
    return values


def read_outcome(raw: pd.DataFrame, by_lower: dict[str, str], column: str, path: Path,
                 file_ids: pd.Series) -> np.ndarray:
    """The [Evaluation] outcome_column of a labels table, as parse_outcome reads it."""
    if column.lower() not in by_lower:
        raise DataError(f"{path}: no column {column!r} ([Evaluation] outcome_column); found "
                        f"{shown(', '.join(raw.columns))}")
    lines = raw.index.to_numpy()
    return parse_outcome(raw[by_lower[column.lower()]], lambda row: (
        f"{path}: line {lines[row]} (FileID {shown(file_ids.iat[row])})"), column)


def check_unique_ids(table: pd.DataFrame, lines: np.ndarray, path: Path) -> None:
    duplicated = table["FileID"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = table["FileID"][duplicated].iloc[0]
        listed = ", ".join(str(n) for n in lines[duplicated & (table["FileID"] == first).to_numpy()][:10])
        raise DataError(f"{path}: FileID {shown(first)} appears more than once (lines {listed})")


def read_labels(path: str | Path, separator: str = "", encoding: str = "auto", consensus_rule: str = "mean",
                outcome_column: str = "") -> pd.DataFrame:
    """Labels as a DataFrame: FileID (str), the six zones (int 0-4), csi, each reader's
    `<zone>@<reader>` scores when the file has readers (the zones are then their consensus), and the
    optional PatientID, split, path and `outcome` (`outcome_column` read as 0/1/NaN) columns.
    Raises DataError naming the line."""
    path = Path(path)
    raw, by_lower = read_csv_table(path, separator, encoding, ("fileid",))
    table = _file_ids(raw, by_lower, path)
    lines = raw.index.to_numpy()
    plain, readers = _score_columns(list(raw.columns), path)
    if plain:
        scores = parse_score_columns(raw, [by_lower[z] for z in ZONES], list(ZONES), path, table["FileID"])
    else:
        by_reader = {reader: parse_score_columns(raw, columns, columns, path, table["FileID"])
                     for reader, columns in readers.items()}
        scores = consensus(np.stack(list(by_reader.values())), consensus_rule)
    for z, zone in enumerate(ZONES):
        table[zone] = scores[:, z]
    table["csi"] = csi_from_scores(scores)
    if not plain:
        table = table.assign(**{reader_column(zone, reader): values[:, z]
                                for reader, values in by_reader.items() for z, zone in enumerate(ZONES)})
    check_unique_ids(table, lines, path)

    if "patientid" in by_lower:
        table["PatientID"] = raw[by_lower["patientid"]].str.strip().to_numpy()
    if "split" in by_lower:
        table["split"] = _parse_splits(raw[by_lower["split"]], lambda row: (
            f"{path}: line {lines[row]} (FileID {shown(table['FileID'].iat[row])})"))
    if outcome_column:
        table["outcome"] = read_outcome(raw, by_lower, outcome_column, path, table["FileID"])
    return table


def _parse_splits(cells: pd.Series, where: Callable[[int], str]) -> np.ndarray:
    """Split names per cell; an empty cell stays "" (the split assigns that row: see assign_splits)."""
    names = cells.str.strip().str.lower().map({**_SPLIT_ALIASES, "": ""})
    unknown = np.flatnonzero(names.isna().to_numpy())
    if len(unknown):
        raise DataError(f"{where(unknown[0])}, column split: {cells.iat[unknown[0]]!r} is not a split; "
                        "allowed train, val, test, or empty to have it assigned")
    return names.to_numpy(dtype=object)
