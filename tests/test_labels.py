"""The labels CSV parser: legacy files, separators, Unknowns and every bad-row error."""

from __future__ import annotations

import numpy as np
import pytest

from src.data.labels import read_labels
from src.data.zones import ZONES
from src.utils.errors import DataError

HEADER = "FileID;right_sup;left_sup;right_mid;left_mid;right_inf;left_inf;csi"


def write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_legacy_file_with_unknowns_and_float_ids(tmp_path):
    path = write(tmp_path, f"{HEADER}\n12345.0;0;1;2;3;;nan\n12346;4;0;0;1;1;0;\n")
    table = read_labels(path)
    assert table["FileID"].tolist() == ["12345", "12346"]
    assert table.loc[0, list(ZONES)].tolist() == [0, 1, 2, 3, 4, 4]
    assert table.loc[1, list(ZONES)].tolist() == [4, 0, 0, 1, 1, 0]
    assert table["csi"].tolist() == pytest.approx([1.5, 0.4])


def test_comma_separator_detected_and_optional_columns(tmp_path):
    text = "FileID,right_sup,left_sup,right_mid,left_mid,right_inf,left_inf,PatientID,split,path\n"
    text += "a,0,0,0,0,0,0,P1,validation,sub/a.png\nb,3,3,3,3,3,3,P2,train,\n"
    table = read_labels(write(tmp_path, text))
    assert table["split"].tolist() == ["val", "train"]
    assert table["PatientID"].tolist() == ["P1", "P2"]
    assert table["path"].tolist() == ["sub/a.png", ""]
    assert "csi" in table and table["csi"].tolist() == [0.0, 3.0]


def test_all_unknown_row_has_undefined_csi(tmp_path):
    table = read_labels(write(tmp_path, f"{HEADER}\n1;;;;;;;\n"))
    assert table.loc[0, list(ZONES)].tolist() == [4] * 6 and np.isnan(table.loc[0, "csi"])


def test_explicit_separator(tmp_path):
    path = write(tmp_path, "FileID|" + "|".join(ZONES) + "\n1|0|0|0|0|0|0\n")
    assert len(read_labels(path, "|")) == 1


@pytest.mark.parametrize("row, fragments", [
    ("7;0;5;0;0;0;0;", ["line 2", "FileID 7", "left_sup", "'5'", "allowed 0, 1, 2, 3, 4"]),
    ("7;0;1;x;0;0;0;", ["line 2", "right_mid", "'x'"]),
    ("7;0;1;1.5;0;0;0;", ["right_mid", "'1.5'"]),
    ("7;-1;1;1;0;0;0;", ["right_sup", "'-1'"]),
    (";0;1;1;0;0;0;", ["line 2", "empty FileID"]),
])
def test_bad_rows_are_named(tmp_path, row, fragments):
    path = write(tmp_path, f"{HEADER}\n{row}\n")
    with pytest.raises(DataError) as err:
        read_labels(path)
    assert str(path) in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_duplicate_file_id(tmp_path):
    path = write(tmp_path, f"{HEADER}\n1;0;0;0;0;0;0;\n2;0;0;0;0;0;0;\n1.0;1;1;1;1;1;1;\n")
    with pytest.raises(DataError, match=r"FileID 1 appears more than once \(lines 2, 4\)"):
        read_labels(path)


def test_missing_columns_and_file(tmp_path):
    with pytest.raises(DataError, match="missing column.*left_inf"):
        read_labels(write(tmp_path, "FileID;right_sup;left_sup;right_mid;left_mid;right_inf\n1;0;0;0;0;0\n"))
    with pytest.raises(DataError, match="CSV file not found"):
        read_labels(tmp_path / "absent.csv")


def test_bad_split_value(tmp_path):
    path = write(tmp_path, f"{HEADER};split\n1;0;0;0;0;0;0;;holdout\n")
    with pytest.raises(DataError, match=r"line 2 \(FileID 1\), column split: 'holdout'"):
        read_labels(path)


def test_the_fast_and_the_row_by_row_reader_agree(tmp_path):
    """The C parser reads the common file; one longer row (a trailing empty field) sends the same
    rows through the csv module instead. Both drop blank and whitespace-only rows and keep line numbers."""
    rows = [HEADER + ";PatientID;split", "00042;0;1;2;3;4;;1.5;P1;Train", "", " ; ;;;;;;;;",
            " 17.0 ;na;N/A;3;2;1;0;;P2;validation", "bad;0;0;0;0;0;x;;P3;test"]
    uniform, ragged = "\n".join(rows) + "\n", "\n".join([rows[0], rows[1] + ";", *rows[2:]]) + "\n"
    errors = []
    for text in (uniform, ragged):
        with pytest.raises(DataError) as error:
            read_labels(write(tmp_path, text))
        errors.append(str(error.value).split(": ", 1)[1])
        assert "line 6 (FileID bad), column left_inf: 'x' is not a zone score" in errors[-1]
    assert errors[0] == errors[1]
    fast, careful = (read_labels(write(tmp_path, text.replace(";x;", ";4;"))) for text in (uniform, ragged))
    assert fast.equals(careful)
    assert fast["FileID"].tolist() == ["00042", "17", "bad"] and fast["split"].tolist() == ["train", "val", "test"]
    assert fast.loc[1, list(ZONES)].tolist() == [4, 4, 3, 2, 1, 0] and fast["PatientID"].tolist() == ["P1", "P2", "P3"]
