"""Decode chest X-ray files (PNG, JPEG, DICOM, NIfTI) into 2-D float32 arrays, bright = dense."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from src.utils.errors import DataError

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")

# ITU-R BT.601 luma weights, the ones Pillow uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Pillow modes whose pixels already are grey intensities; "I;16*" keep 16-bit PNG precision.
_GREY_MODES = ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def file_extension(path: str | Path) -> str:
    """Lower-case extension of `path`, counting ".nii.gz" as one extension."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def read_image(path: str | Path) -> np.ndarray:
    """Raw intensities of the image at `path` as a 2-D float32 array, oriented like a radiograph.

    Raises DataError naming the file when it is missing, empty, corrupt or of an unsupported type.
    """
    path = Path(path)
    ext = file_extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{path}: unsupported extension '{ext}' (supported: {' '.join(SUPPORTED_EXTENSIONS)})"
        )
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    reader = {".dcm": _read_dicom, ".dicom": _read_dicom, ".nii": _read_nifti, ".nii.gz": _read_nifti}
    try:
        image = reader.get(ext, _read_pillow)(path)
    except DataError:
        raise
    except Exception as exc:  # each decoder signals bad bytes with its own exception types
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DataError(f"{path}: cannot decode image ({reason})") from exc
    if image.ndim != 2 or min(image.shape) == 0:
        raise DataError(f"{path}: expected a 2-D image, got an array of shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # phone/scanner JPEGs may store their rotation in EXIF only
        if img.mode in _GREY_MODES:
            return np.asarray(img)
        if img.mode in ("1", "LA", "La"):
            return np.asarray(img.convert("L"))
        return _luminance(np.asarray(img.convert("RGB")))


def _read_dicom(path: Path) -> np.ndarray:
    # pydicom and nibabel are imported by the readers that need them: together they cost ~0.3 s, which
    # `--mode check` on a warm cache and every other mode that decodes nothing need not pay.
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, index=0)  # multi-frame: decode the first frame only
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        return _luminance(apply_color_lut(arr, ds))
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return _luminance(arr)
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds).astype(np.float32)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores dense tissue as low values
        arr = arr.max() + arr.min() - arr
    return arr


def _read_nifti(path: Path) -> np.ndarray:
    """NIfTI slice with the patient's head on top and their right on the image's left.

    A 4-D file gives its first volume; a 3-D volume whose axes all exceed 1 gives its middle slice
    along the last axis after reorientation to RAS, i.e. the middle axial slice.
    """
    import nibabel as nib

    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    if data.ndim > 3:
        data = data[(...,) + (0,) * (data.ndim - 3)]
    data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    # io_orientation maps array axes to the closest RAS+ axes: after apply_orientation, array axis
    # 0 runs towards the patient's Right, 1 towards Anterior, 2 towards Superior.
    data = nib.orientations.apply_orientation(data, nib.orientations.io_orientation(img.affine))
    singleton = [axis for axis, n in enumerate(data.shape) if n == 1]
    if len(singleton) > 1:
        raise DataError(f"{path}: expected a 2-D image, got a NIfTI array of shape {img.shape}")
    plane = np.squeeze(data, axis=singleton[0]) if singleton else data[:, :, data.shape[2] // 2]
    # plane axes are (h, v) in R, A, S order: R-S for a frontal (coronal) image, R-A for an axial
    # slice, A-S for a lateral one. Transposing puts v on rows and h on columns; flipping rows puts
    # the superior (or anterior) end on top, flipping columns puts the patient's right (or anterior
    # side) on the image's left, as a radiograph is viewed.
    return plane.T[::-1, ::-1]
