"""DICOM as PACS and export tools write it: every transfer syntax with a real sample, files without
extension or preamble, .IMA and upper-case names, nested folders."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import data_store
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

from src.data.locate import index_directory, locate_images
from src.data.readers import read_image
from src.utils.errors import DataError

SAMPLE_DIRS = (Path(data_store.__file__).parent / "data", Path(pydicom.__file__).parent / "data")
SMALL = "MR_small.dcm"  # 64x64 16-bit MR, the uncompressed twin of the lossless samples below

# Transfer syntax -> (sample, reference it must equal exactly, or None).
DECODED = {
    "1.2.840.10008.1.2": ("MR_small_implicit.dcm", SMALL),
    "1.2.840.10008.1.2.1": (SMALL, None),
    "1.2.840.10008.1.2.1.99": ("image_dfl.dcm", None),
    "1.2.840.10008.1.2.2": ("MR_small_bigendian.dcm", SMALL),
    "1.2.840.10008.1.2.4.50": ("SC_rgb_dcmtk_+eb+cr.dcm", None),
    "1.2.840.10008.1.2.4.51": ("JPGExtended.dcm", None),
    "1.2.840.10008.1.2.4.70": ("JPEG-LL.dcm", None),
    "1.2.840.10008.1.2.4.80": ("MR_small_jpeg_ls_lossless.dcm", SMALL),
    "1.2.840.10008.1.2.4.81": ("JPEGLSNearLossless_16.dcm", None),
    "1.2.840.10008.1.2.4.90": ("MR_small_jp2klossless.dcm", SMALL),
    "1.2.840.10008.1.2.4.91": ("693_J2KI.dcm", None),
    "1.2.840.10008.1.2.5": ("MR_small_RLE.dcm", SMALL),
}
# Samples whose streams no installed decoder reads (pydicom's own test suite uses them as broken
# cases): refused with one clean line. README lists them.
REFUSED = ("JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm")


def sample(name: str) -> Path:
    return next(path for root in SAMPLE_DIRS for path in root.rglob(name))


def _image_samples():
    """(transfer syntax, file) of every sample holding pixel data in pydicom-data and pydicom."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for root in SAMPLE_DIRS:
            for path in root.rglob("*.dcm"):
                try:
                    ds = pydicom.dcmread(path, defer_size="1 KB")
                    syntax = ds.file_meta.TransferSyntaxUID
                except Exception:  # a few samples are deliberately unreadable
                    continue
                if "PixelData" in ds:
                    yield str(syntax), path


def test_every_shipped_transfer_syntax_is_covered():
    shipped = {syntax for syntax, _ in _image_samples()}
    assert len(shipped) >= 12
    assert shipped <= set(DECODED), f"samples of untested syntaxes: {sorted(shipped - set(DECODED))}"


@pytest.mark.parametrize("syntax", sorted(DECODED), ids=lambda uid: UID(uid).name)
def test_transfer_syntax_decodes(syntax):
    name, reference = DECODED[syntax]
    path = sample(name)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    image = read_image(path)
    assert image.ndim == 2 and np.isfinite(image).all() and image.std() > 0
    if reference:
        np.testing.assert_array_equal(image, read_image(sample(reference)))


def test_jpeg_lossless_process14_matches_its_lossy_twin():
    # JPEG-LL.dcm and JPGExtended.dcm hold the same 12-bit image; lossy coding alone differs.
    lossless, lossy = read_image(sample("JPEG-LL.dcm")), read_image(sample("JPGExtended.dcm"))
    assert lossless.shape == lossy.shape == (1024, 256)
    assert np.corrcoef(lossless.ravel(), lossy.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("name", REFUSED)
def test_undecodable_samples_are_refused_cleanly(name):
    with pytest.raises(DataError, match="cannot decode image") as err:
        read_image(sample(name))
    assert name in str(err.value) and "\n" not in str(err.value)


# Files as export tools name and write them.


def _without_preamble(path: Path) -> bytes:
    """The file minus its 128-byte preamble and 'DICM' prefix (file meta group kept)."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    return raw[132:]


def _dataset_only(path: Path, out: Path) -> Path:
    """Only the data set, no file meta at all, as old ACR-NEMA style exporters write it."""
    ds = pydicom.dcmread(path)
    ds.file_meta, ds.preamble = FileMetaDataset(), None
    ds.save_as(out, enforce_file_format=False, implicit_vr=True, little_endian=True)
    return out


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    """A PACS export: DICOM under every name an exporter uses, plus files that are not images."""
    src = sample(SMALL)
    root = tmp_path / "export"
    root.mkdir()
    shutil.copy(src, root / "IM0001")  # no extension
    shutil.copy(src, root / "IM0002.IMA")  # Siemens
    shutil.copy(src, root / "IM0003.DCM")  # upper case
    shutil.copy(src, root / "1.2.840.113619.2.55.3.4")  # UID as file name
    (root / "IM0005").write_bytes(_without_preamble(src))
    _dataset_only(src, root / "IM0006")
    (root / "notes.txt").write_text("exported by PACS\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    shutil.copy(src, root / "._IM0001")  # macOS resource-fork copy
    return root


def test_exported_dicom_is_found_without_extension(export_dir):
    found = index_directory(export_dir)
    assert sorted(found) == ["1.2.840.113619.2.55.3.4", "IM0001", "IM0002", "IM0003", "IM0005", "IM0006"]
    reference = read_image(sample(SMALL))
    for path in found.values():
        np.testing.assert_array_equal(read_image(path), reference)


def test_image_extension_ima_finds_upper_case(export_dir):
    assert sorted(index_directory(export_dir, extension=".ima")) == ["IM0002"]


def test_dicom_without_pixels_is_refused_even_by_force(tmp_path):
    ds = pydicom.dcmread(sample(SMALL))
    del ds.PixelData
    ds.save_as(tmp_path / "IM0001")
    (tmp_path / "IM0002").write_bytes(_without_preamble(tmp_path / "IM0001"))
    for name in ("IM0001", "IM0002"):
        with pytest.raises(DataError, match="without pixel data"):
            read_image(tmp_path / name)


def test_not_dicom_without_extension_is_refused(tmp_path):
    (tmp_path / "README").write_text("not an image\n")
    assert index_directory(tmp_path) == {}
    with pytest.raises(DataError, match="unsupported extension '' and not DICOM"):
        read_image(tmp_path / "README")


def test_recursive_folders_give_relative_file_ids(tmp_path):
    src = sample(SMALL)
    for relative in ("p1/study1/IM0001", "p1/study2/IM0001.dcm", "p2/IM0001.IMA"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / relative)
    assert index_directory(tmp_path) == {}
    assert sorted(index_directory(tmp_path, recursive=True)) == ["p1/study1/IM0001", "p1/study2/IM0001", "p2/IM0001"]
    table = pd.DataFrame({"FileID": ["p1/study2/IM0001", "p2/IM0001", "p3/IM0001"]})
    paths = locate_images(table, tmp_path, recursive=True)
    assert paths == [tmp_path / "p1/study2/IM0001.dcm", tmp_path / "p2/IM0001.IMA", None]
