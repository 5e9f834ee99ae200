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


# --- several readers, their consensus, an outcome, and BrixIA's files as distributed ---------------

def _readers_file(tmp_path, rows: dict[str, list[list[int | str]]], extra: str = "", cells: list[str] = ()):
    """FileID and each reader's six `<zone>@<reader>` columns (rows[reader][image]), plus `extra` columns."""
    names = list(rows)
    header = ["FileID", *(f"{zone}@{r}" for r in names for zone in ZONES)] + ([extra] if extra else [])
    lines = [";".join(header)]
    for i in range(len(rows[names[0]])):
        values = [str(v) for r in names for v in rows[r][i]]
        lines.append(";".join([f"{i + 1}", *values] + ([cells[i]] if extra else [])))
    return write(tmp_path, "\n".join(lines) + "\n")


@pytest.mark.parametrize("rule, expected", [
    # zone by zone: scores (0, 1, 1, 3) -> mean 1.25, median 1, mode 1; (0, 0, 2, 2) -> 1, 1, tie 0/2 nearest 1: 2;
    # (1, 2, "", "") of four readers: half Unknown is not most -> 1.5 -> 2 all rules; (3, "", "", 0): most not Unknown
    ("mean", [1, 1, 2, 4, 2, 3]), ("median", [1, 1, 2, 4, 2, 3]), ("majority", [1, 2, 2, 4, 2, 3]),
])
def test_readers_columns_make_the_consensus_target(tmp_path, rule, expected):
    rows = {"r1": [[0, 0, 1, "", 1, 3]], "r2": [[1, 0, 2, "", 2, 3]], "r3": [[1, 2, "", "", 2, 3]],
            "r4": [[3, 2, "", 1, 3, 3]]}
    table = read_labels(_readers_file(tmp_path, rows), consensus_rule=rule)
    assert table.loc[0, list(ZONES)].tolist() == expected
    assert table.loc[0, [f"{zone}@r4" for zone in ZONES]].tolist() == [3, 2, 4, 1, 3, 3]


def test_consensus_rules_by_construction():
    from src.data.consensus import NOT_READ, consensus

    votes = np.array([[0, 1, 3, 4, 4, NOT_READ], [2, 1, 3, 4, 2, NOT_READ], [2, 3, 0, 1, 4, 1]])[:, None, :]
    assert consensus(votes, "mean")[0].tolist() == [1, 2, 2, 4, 4, 1]  # 4/3 -> 1, 5/3 -> 2, 2, most U, most U, 1
    assert consensus(votes, "median")[0].tolist() == [2, 1, 3, 4, 4, 1]
    assert consensus(votes, "majority")[0].tolist() == [2, 1, 3, 4, 4, 1]
    two = np.array([[0, 1, 0], [3, 2, 1]])[:, None, :]
    # Halves round up: (0, 3) -> 1.5 -> 2, (1, 2) -> 2, (0, 1) -> 1; majority picks a score given, the tied one
    # nearest that median: (0, 3) -> 3.
    for rule, expected in (("mean", [2, 2, 1]), ("median", [2, 2, 1]), ("majority", [3, 2, 1])):
        assert consensus(np.pad(two, ((0, 0), (0, 0), (0, 3))), rule)[0, :3].tolist() == expected


def test_readers_files_merge_as_readers(tmp_path):
    from src.config.schema import DataConfig
    from src.data.label_sources import read_label_table

    first = write(tmp_path, f"{HEADER};PatientID\n1;0;0;0;0;0;0;;P1\n2;1;1;1;1;1;1;;P2\n", "anna.csv")
    second = write(tmp_path, f"{HEADER}\n2;2;2;2;2;2;;\n3;3;3;3;3;3;3;\n", "ben.csv")
    table = read_label_table([first, second], DataConfig(consensus="mean"))
    assert table["FileID"].tolist() == ["1", "2", "3"] and table["PatientID"].tolist() == ["P1", "P2", ""]
    assert table.loc[1, list(ZONES)].tolist() == [2, 2, 2, 2, 2, 1]  # (1 + 2) / 2 up; ben's Unknown is not most
    assert table.loc[0, [f"{zone}@ben" for zone in ZONES]].tolist() == [-1] * 6  # ben did not read image 1


def test_outcome_column_is_binary(tmp_path):
    text = f"{HEADER};AHF\n1;0;0;0;0;0;0;;1\n2;0;0;0;0;0;0;;No\n3;0;0;0;0;0;0;;\n4;0;0;0;0;0;0;;1.0\n"
    table = read_labels(write(tmp_path, text), outcome_column="ahf")
    assert table["outcome"].tolist()[:2] == [1.0, 0.0] and np.isnan(table["outcome"][2]) and table["outcome"][3] == 1
    with pytest.raises(DataError, match=r"line 3 \(FileID 2\), column AHF: '2' is not a binary outcome"):
        read_labels(write(tmp_path, f"{HEADER};AHF\n1;0;0;0;0;0;0;;1\n2;0;0;0;0;0;0;;2\n"), outcome_column="AHF")
    with pytest.raises(DataError, match="no column 'death'"):
        read_labels(write(tmp_path, f"{HEADER}\n1;0;0;0;0;0;0;\n"), outcome_column="death")


def test_brixia_metadata_restores_a_zero_led_score_saved_as_a_number(tmp_path, log_messages):
    from src.data.brixia import read_brixia

    text = ("Filename;StudyDate;Modality;StudyId;BrixiaScore;BrixiaScoreGlobal;ConsensusTestset;Subject;Sex;"
            "AgeAtStudyDateFiveYear\n"
            "1.dcm;20200304;CR;7;000012;3;0;S1;M;13\n"  # as distributed: text with its zeros
            "2.dcm;20200304;DX;8;12;3;1;S2;F;14\n"  # the same score after a spreadsheet saved it as a number
            "3.dcm;20200305;DX;9;321032.0;11;0;S1;M;13\n")
    table = read_brixia(write(tmp_path, text, "metadata_global_v2.csv"))
    # A..F = right sup, mid, inf, left sup, mid, inf; ZONES order is right_sup, left_sup, right_mid, ...
    assert table.loc[0, list(ZONES)].tolist() == [0, 0, 0, 1, 0, 2]
    assert table.loc[1, list(ZONES)].tolist() == table.loc[0, list(ZONES)].tolist()
    assert table.loc[2, list(ZONES)].tolist() == [3, 0, 2, 3, 1, 2]
    assert table["FileID"].tolist() == ["1", "2", "3"] and table["path"].tolist() == ["1.dcm", "2.dcm", "3.dcm"]
    assert table["PatientID"].tolist() == ["S1", "S2", "S1"] and table["split"].tolist() == ["", "test", ""]
    assert any("1 BrixiaScore value(s) had lost their leading zeros" in m for m in log_messages)


def test_brixia_consensus_file_and_public_subset(tmp_path):
    from src.data.brixia import read_brixia

    consensus = ("filename,MeanA,MeanB,MeanC,MeanD,MeanE,MeanF,S-Global,ModeA,ModeB,ModeC,ModeD,ModeE,ModeF,J-Global\n"
                 "a.dcm,0.4,1.5,2.6,3,0,1.2,8.7,0,1,3,3,0,1,8\n")
    path = write(tmp_path, consensus, "metadata_consensus_v1.csv")
    assert read_brixia(path).loc[0, list(ZONES)].tolist() == [0, 3, 2, 0, 3, 1]  # means, a half up
    assert read_brixia(path, consensus_rule="majority").loc[0, list(ZONES)].tolist() == [0, 3, 1, 0, 3, 1]
    with pytest.raises(DataError, match="consensus = median cannot be formed"):
        read_brixia(path, consensus_rule="median")
    public = ("\ufefffilename,S-A,S-B,S-C,S-D,S-E,S-F,S-Global,J-A,J-B,J-C,J-D,J-E,J-F,J-Global\n"
              "x.jpeg,3,3,3,3,3,2,17,2,3,3,3,3,3,17\n")
    table = read_brixia(write(tmp_path, public, "public-annotations.csv"))
    assert table.loc[0, list(ZONES)].tolist() == [3, 3, 3, 3, 3, 3]  # (3 + 2) / 2 rounds up
    assert table.loc[0, [f"{zone}@junior" for zone in ZONES]].tolist() == [2, 3, 3, 3, 3, 3]
    assert table["FileID"].tolist() == ["x"]
