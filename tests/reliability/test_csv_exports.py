"""Labels CSVs as spreadsheets write them: BOM, Windows-1252/Latin-1, UTF-16, CRLF, quotes, extra
columns, ';' ',' or tab. Every variant must give the same table as the plain UTF-8 file."""

from __future__ import annotations

import codecs

import pandas as pd
import pytest

from src.data.labels import read_labels
from src.data.zones import ZONES
from src.utils.errors import DataError

ROWS = [("00042", "0", "1", "2", "3", "", "1", "Zoë Müller", "train"),
        ("12345.0", "4", "0", "0", "1", "1", "0", "François; Ñúñez", "val")]
COLUMNS = ["FileID", *ZONES, "PatientID", "split"]


def _csv(sep: str = ";", newline: str = "\n", quote_all: bool = False, extra: bool = False) -> str:
    def cell(value: str) -> str:
        return f'"{value}"' if quote_all or sep in value else value

    header = COLUMNS + (["Comment", "Reader"] if extra else [])
    lines = [sep.join(cell(c) for c in header)]
    for row in ROWS:
        lines.append(sep.join(cell(v) for v in row + (("see ""notes""", "Dr. Ø") if extra else ())))
    return newline.join(lines) + newline


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("plain") / "labels.csv"
    path.write_text(_csv(), encoding="utf-8")
    table = read_labels(path)
    assert table["FileID"].tolist() == ["00042", "12345"]  # own characters kept, float fixed
    assert table["PatientID"].tolist() == ["Zoë Müller", "François; Ñúñez"]
    return table


@pytest.mark.parametrize("name, data", [
    ("utf-8 BOM", codecs.BOM_UTF8 + _csv().encode("utf-8")),
    ("Windows-1252", _csv().encode("cp1252")),
    ("Latin-1", _csv().encode("latin-1")),
    ("UTF-16 (Excel Unicode text)", _csv(sep="\t", newline="\r\n").encode("utf-16")),
    ("CRLF", _csv(newline="\r\n").encode("utf-8")),
    ("quoted fields", _csv(quote_all=True).encode("utf-8")),
    ("extra columns", _csv(extra=True).encode("utf-8")),
    ("comma", _csv(sep=",").encode("utf-8")),
    ("comma, quoted, CRLF, BOM, cp1252", _csv(sep=",", newline="\r\n", quote_all=True)
     .encode("cp1252")),
    ("tab", _csv(sep="\t").encode("utf-8")),
    ("blank and empty rows", (_csv() + "\n;;;;;;;;\n\n").encode("utf-8")),
])
def test_spreadsheet_variants_read_alike(tmp_path, expected, name, data):
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    pd.testing.assert_frame_equal(read_labels(path), expected)


def test_non_utf8_is_named_in_a_warning(tmp_path, log_messages):
    path = tmp_path / "labels.csv"
    path.write_bytes(_csv().encode("cp1252"))
    read_labels(path)
    assert any("not UTF-8 text; read as Windows-1252" in m and str(path) in m for m in log_messages)


def test_explicit_encoding_that_does_not_fit_is_a_clear_error(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(_csv().encode("cp1252"))
    with pytest.raises(DataError, match=r"byte \d+ is not valid utf-8 text; set \[Data\] csv_encoding"):
        read_labels(path, encoding="utf-8")
    assert read_labels(path, encoding="cp1252")["PatientID"].tolist()[0] == "Zoë Müller"


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(_csv() + "\n\n77;0;0;9;0;0;0;;\n")
    with pytest.raises(DataError, match=r"line 6 \(FileID 77\), column right_mid: '9'"):
        read_labels(path)


@pytest.mark.parametrize("content, message", [
    ("", "the CSV file is empty"),
    ("\n\n  \n", "the CSV file is empty"),
    ("FileID\n1\n", "missing column"),
    ('FileID;right_sup\n"unterminated;1\n', "missing column"),
    ("FileID;" + ";".join(ZONES) + "\n1;0;0;0;0;0;0;extra\n", r"line 2: 8 fields but the header has 7"),
    ("FileID;FILEID;" + ";".join(ZONES) + "\n", "column FILEID appears twice"),
])
def test_malformed_csv_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_labels(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_directory_instead_of_csv(tmp_path):
    with pytest.raises(DataError, match="is a directory; expected the labels CSV file"):
        read_labels(tmp_path)
