"""FileIDs as hospitals write them (00042, 12345.0) and labels paths that must stay in image_dir."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.data.labels import normalize_file_id
from src.data.locate import locate_images, number_spelling
from src.utils.errors import DataError


@pytest.mark.parametrize("raw, kept", [
    ("00042", "00042"), (" 00042 ", "00042"), ("12345.0", "12345"), ("00042.00", "00042"), ("42", "42"),
    ("1e3", "1e3"), ("12.5", "12.5"), ("A-007", "A-007"), ("0", "0"), ("1.2.840.10008", "1.2.840.10008"),
])
def test_normalize_keeps_own_characters(raw, kept):
    assert normalize_file_id(raw) == kept


@pytest.mark.parametrize("file_id, number", [
    ("00042", "42"), ("42", "42"), ("42.0", "42"), ("000", "0"), ("A42", None), ("4.2", None), ("", None),
])
def test_number_spelling(file_id, number):
    assert number_spelling(file_id) == number


def _images(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / name)
    return root


def _ids(*file_ids: str, paths: tuple[str, ...] = ()) -> pd.DataFrame:
    table = pd.DataFrame({"FileID": list(file_ids)})
    return table.assign(path=list(paths)) if paths else table


def test_own_spelling_first_then_another_spelling_reported(tmp_path, log_messages):
    root = _images(tmp_path / "img", "00042.png", "42.png", "00007.png", "12345.png", "0815.PNG")
    found = locate_images(_ids("00042", "42", "7", "12345", "815", "99"), root, source="labels.csv")
    assert found == [root / "00042.png", root / "42.png", root / "00007.png", root / "12345.png",
                     root / "0815.PNG", None]
    warnings = [m for m in log_messages if "another spelling" in m]
    assert len(warnings) == 1
    for fragment in ("labels.csv: 2 FileID(s)", "7 -> 00007.png", "815 -> 0815.PNG"):
        assert fragment in warnings[0]


def test_ambiguous_spelling_is_refused(tmp_path):
    root = _images(tmp_path / "img", "042.png", "0042.png")
    with pytest.raises(DataError, match=r"labels.csv: line 2 \(FileID 42\): matches several files.*042.png"):
        locate_images(_ids("42"), root, source="labels.csv")


def test_extension_setting_keeps_spelling_fallback(tmp_path):
    root = _images(tmp_path / "img", "00042.png", "00042.jpg")
    assert locate_images(_ids("42"), root, extension="jpg") == [root / "00042.jpg"]


# Safety: nothing outside image_dir unless [Data] allow_outside_paths = true.


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    _images(tmp_path / "secret", "x.png")
    root = _images(tmp_path / "img", "in.png", "sub/deep.png")
    os.symlink(tmp_path / "secret" / "x.png", root / "link.png")
    os.symlink(tmp_path / "secret", root / "linkdir")
    return root


@pytest.mark.parametrize("given", ["../secret/x.png", "sub/../../secret/x.png", "linkdir/x.png", "link.png",
                                   "ABSOLUTE"])
def test_labels_paths_cannot_leave_image_dir(outside, given):
    given = str(outside.parent / "secret" / "x.png") if given == "ABSOLUTE" else given
    with pytest.raises(DataError, match=r"line 2 \(FileID a\): path .* leads outside image_dir.*allow_outside_paths"):
        locate_images(_ids("a", paths=(given,)), outside, source="labels.csv")
    assert locate_images(_ids("a", paths=(given,)), outside, allow_outside=True) == [
        Path(given) if Path(given).is_absolute() else outside / given]


def test_symlinked_image_out_of_image_dir_is_refused(outside):
    with pytest.raises(DataError, match=r"FileID link\): .* symbolic link leading outside image_dir"):
        locate_images(_ids("link"), outside, source="labels.csv")
    assert locate_images(_ids("link"), outside, allow_outside=True) == [outside / "link.png"]


def test_paths_inside_image_dir_are_fine(outside):
    found = locate_images(_ids("a", "b", "deep", paths=("in.png", "sub/deep.png", "")), outside, recursive=True)
    assert found == [outside / "in.png", outside / "sub/deep.png", None]  # recursive ids keep their folder
    assert locate_images(_ids("sub/deep"), outside, recursive=True) == [outside / "sub/deep.png"]


def test_file_id_cannot_climb_out(outside):
    assert locate_images(_ids("../secret/x", "/etc/passwd"), outside, recursive=True) == [None, None]
