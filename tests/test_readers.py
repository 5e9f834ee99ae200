"""read_image on real PNG/JPEG/DICOM/NIfTI files: values, orientation and errors."""

from pathlib import Path

import data_store
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from src.data.readers import SUPPORTED_EXTENSIONS, file_extension, read_image
from src.utils.errors import DataError

DICOM_DATA = Path(data_store.__file__).parent / "data"
NIFTI_DATA = Path(nib.__file__).parent / "tests" / "data"
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def rg1() -> np.ndarray:
    """The uncompressed 16-bit MONOCHROME1 chest radiograph, as read_image returns it."""
    return read_image(DICOM_DATA / "RG1_UNCR.dcm")


@pytest.mark.parametrize(
    "name, ext",
    [
        ("a/B.PNG", ".png"),
        ("x.JPEG", ".jpeg"),
        ("scan.v2.dcm", ".dcm"),
        ("X.NII.GZ", ".nii.gz"),
        ("noext", ""),
    ],
)
def test_file_extension(name, ext):
    assert file_extension(name) == ext


@pytest.mark.parametrize("name", ["copy.dicom", "COPY.DCM"])
def test_dicom_extension_variants(tmp_path, name):
    assert file_extension(name) in SUPPORTED_EXTENSIONS
    (tmp_path / name).write_bytes(CT_SMALL.read_bytes())
    np.testing.assert_array_equal(read_image(tmp_path / name), read_image(CT_SMALL))


# PNG / JPEG


def test_png_8bit(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (20, 30)
    np.testing.assert_array_equal(image, pixels)


def test_png_16bit_keeps_precision(tmp_path):
    # Odd values spread over the full range: any 8-bit reduction would change them.
    pixels = np.random.default_rng(1).integers(0, 65536, (24, 16), dtype=np.uint16) | 1
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_becomes_grey(tmp_path, mode):
    rgb = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    img.save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    assert image.shape == (12, 10)
    pillow_grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    np.testing.assert_allclose(image, pillow_grey, atol=0.51)  # Pillow rounds to integers


def test_jpeg(tmp_path):
    ramp = np.add.outer(np.arange(32), np.arange(48)).astype(np.uint8) * 3
    Image.fromarray(ramp).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / "a.jpg")))
    assert np.abs(image - ramp).mean() < 3  # lossy, but close to what was written


# DICOM


def test_dicom_jpeg2000_lossless_matches_uncompressed(rg1):
    path = DICOM_DATA / "RG1_J2KR.dcm"
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_image(path), rg1)


def test_dicom_monochrome1_is_inverted(rg1):
    ds = pydicom.dcmread(DICOM_DATA / "RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert rg1.shape == ds.pixel_array.shape
    assert np.corrcoef(rg1.ravel(), ds.pixel_array.ravel().astype(np.float64))[0, 1] < -0.99


def test_dicom_rescale_is_applied():
    ds = pydicom.dcmread(CT_SMALL)
    assert float(ds.RescaleIntercept) != 0 and "WindowCenter" not in ds
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(read_image(CT_SMALL), expected)


def test_dicom_window_is_applied(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(np.median(hu)) + 0.25, 200.0  # window edges fall between integer HU
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.save_as(tmp_path / "windowed.dcm")
    image = read_image(tmp_path / "windowed.dcm")
    # DICOM PS3.3 C.11.2.1.2: linear window, saturated at or below `low` and above `high`.
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    below, above = hu <= low, hu > high
    assert below.any() and above.any() and (~below & ~above).any()
    assert np.all(image[below] == image.min()) and np.all(image[above] == image.max())
    inside = image[~below & ~above]
    assert np.all((inside > image.min()) & (inside < image.max()))
    order = np.argsort(hu[~below & ~above], kind="stable")
    assert np.all(np.diff(inside[order]) >= 0)  # monotonic in HU


def test_dicom_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(DICOM_DATA / "vlut_04.dcm")
    entries, first_mapped, _ = ds.VOILUTSequence[0].LUTDescriptor
    lut = np.asarray(ds.VOILUTSequence[0].LUTData)
    expected = lut[np.clip(ds.pixel_array.astype(np.int64) - first_mapped, 0, entries - 1)]
    assert not np.array_equal(expected, ds.pixel_array)
    np.testing.assert_array_equal(read_image(DICOM_DATA / "vlut_04.dcm"), expected)


def test_dicom_multiframe_gives_the_chosen_frame():
    ds = pydicom.dcmread(DICOM_DATA / "emri_small.dcm")
    frames = ds.pixel_array
    assert int(ds.NumberOfFrames) > 1 and not np.array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(read_image(DICOM_DATA / "emri_small.dcm", "first"), frames[0])
    np.testing.assert_array_equal(read_image(DICOM_DATA / "emri_small.dcm", "index", 1), frames[1])
    with pytest.raises(DataError, match="a volume of 10 frames"):
        read_image(DICOM_DATA / "emri_small.dcm")


def test_dicom_rgb_becomes_grey():
    rgb = pydicom.dcmread(DICOM_DATA / "SC_rgb.dcm").pixel_array
    assert rgb.ndim == 3 and rgb.shape[-1] == 3
    pillow_grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    np.testing.assert_allclose(read_image(DICOM_DATA / "SC_rgb.dcm"), pillow_grey, atol=0.51)


# NIfTI: a frontal image must show the patient's right on the image's left and the head on top.

RIGHT_SUPERIOR = 9.0


def _coronal(shape_rs: tuple[int, int], right_at_high_index: bool) -> np.ndarray:
    """A (right-left, inferior-superior) plane with one bright voxel at the patient's right, superior."""
    plane = np.ones(shape_rs, dtype=np.float32)
    plane[-1 if right_at_high_index else 0, -1] = RIGHT_SUPERIOR
    return plane


@pytest.mark.parametrize(
    "codes, data, affine",
    [
        # RAS: +i towards Right, the A axis is the singleton (projection) axis.
        ("RAS", _coronal((6, 10), True)[:, None, :], np.eye(4)),
        # LAS / LPS: +i towards Left, so the patient's right is at i = 0.
        ("LAS", _coronal((6, 10), False)[:, None, :], np.diag([-1.0, 1, 1, 1])),
        ("LPS", _coronal((6, 10), False)[:, None, :], np.diag([-1.0, -1, 1, 1])),
        # 2-D file whose second axis runs towards Superior (k, the singleton, is A).
        (
            "RSA",
            _coronal((6, 10), True),
            np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
        ),
    ],
)
def test_nifti_orientation(tmp_path, codes, data, affine):
    img = nib.Nifti1Image(data, affine)
    assert "".join(nib.aff2axcodes(img.affine)) == codes
    nib.save(img, tmp_path / "x.nii.gz")
    image = read_image(tmp_path / "x.nii.gz")
    assert image.shape == (10, 6)  # rows: superior -> inferior, columns: right -> left
    assert np.unravel_index(np.argmax(image), image.shape) == (0, 0)
    assert image[0, 0] == RIGHT_SUPERIOR and np.count_nonzero(image == RIGHT_SUPERIOR) == 1


def test_nifti_real_volume_gives_middle_axial_slice(tmp_path):
    volume = np.zeros((4, 5, 7), dtype=np.float32)
    volume[:, :, 3] = 1.0
    volume[3, 4, 3] = RIGHT_SUPERIOR  # right, anterior in the middle slice
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii")
    image = read_image(tmp_path / "v.nii", "middle")
    assert image.shape == (5, 4) and image.min() == 1.0  # only the middle slice, all ones there
    assert image[0, 0] == RIGHT_SUPERIOR  # anterior on top, patient's right on the left


def test_nifti_bundled_las_volume():
    img = nib.load(NIFTI_DATA / "anatomical.nii")
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    data = img.get_fdata()
    # LAS: columns must run with +i (right -> left), rows against +j (anterior on top).
    expected = data[:, ::-1, data.shape[2] // 2].T
    np.testing.assert_array_equal(read_image(NIFTI_DATA / "anatomical.nii", "middle"), expected)


def test_nifti_bundled_4d_gives_the_chosen_volume():
    img = nib.load(NIFTI_DATA / "example4d.nii.gz")
    assert len(img.shape) == 4 and nib.aff2axcodes(img.affine) == ("L", "A", "S")
    data = img.get_fdata()
    middle = data[:, ::-1, data.shape[2] // 2, data.shape[3] // 2].T
    assert not np.array_equal(middle, data[:, ::-1, data.shape[2] // 2, 0].T)
    np.testing.assert_allclose(read_image(NIFTI_DATA / "example4d.nii.gz", "middle"), middle, rtol=1e-6)
    with pytest.raises(DataError, match=f"a volume of {data.shape[3]} volumes"):
        read_image(NIFTI_DATA / "example4d.nii.gz")


def test_nifti_bundled_ras_gz():
    data = nib.load(NIFTI_DATA / "standard.nii.gz").get_fdata()
    image = read_image(NIFTI_DATA / "standard.nii.gz", "middle")
    np.testing.assert_array_equal(image, data[::-1, ::-1, data.shape[2] // 2].T)


# Errors: one line naming the file.


def _png_bytes(tmp_path: Path) -> bytes:
    noise = np.random.default_rng(3).integers(0, 65536, (64, 64), dtype=np.uint16)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    return (tmp_path / "ok.png").read_bytes()


def _dicom_without_pixels(tmp_path: Path) -> bytes:
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    return (tmp_path / "nopix.dcm").read_bytes()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", lambda tmp: b"", "empty"),
        ("empty.dcm", lambda tmp: b"", "empty"),
        ("empty.nii.gz", lambda tmp: b"", "empty"),
        ("truncated.png", lambda tmp: _png_bytes(tmp)[:4000], "cannot decode"),
        ("garbage.jpg", lambda tmp: b"not a jpeg at all" * 20, "cannot decode"),
        ("truncated.dcm", lambda tmp: (DICOM_DATA / "RG1_UNCR.dcm").read_bytes()[:100_000], "cannot decode"),
        ("garbage.dcm", lambda tmp: b"not a dicom file" * 20, "cannot decode"),
        ("nopixels.dcm", _dicom_without_pixels, "cannot decode"),
        ("truncated.nii.gz", lambda tmp: (NIFTI_DATA / "standard.nii.gz").read_bytes()[:60], "cannot decode"),
        ("scan.bmp", lambda tmp: b"BM" + bytes(100), "unsupported extension"),
    ],
)
def test_bad_files_raise_data_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    with pytest.raises(DataError, match=reason) as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        read_image(tmp_path / "absent.dcm")
    assert "absent.dcm" in str(err.value)
