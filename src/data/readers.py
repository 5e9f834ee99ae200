"""Decode chest X-ray files (PNG, JPEG, DICOM, NIfTI) into 2-D float32 arrays, bright = dense."""

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from src.utils.errors import DataError

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom", ".ima")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg") + DICOM_EXTENSIONS + NIFTI_EXTENSIONS

# ITU-R BT.601 luma weights, the ones Pillow uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Pillow modes whose pixels already are grey intensities; "I;16*" keep 16-bit PNG precision.
_GREY_MODES = ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
# A DICOM file without its 128-byte preamble starts with its first element: group 0002 (file meta)
# or 0008 (identification), little endian, with a small element number.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00")


def file_extension(path: str | Path) -> str:
    """Lower-case extension of `path`, counting ".nii.gz" as one extension."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    dot = name.rfind(".")  # Path.suffix, without building a Path: this runs once per file of a folder
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def looks_like_dicom(path: str | Path) -> bool:
    """True for a file that starts like DICOM: 'DICM' after the preamble, or a bare first element.

    Export tools write DICOM without an extension (or with UID-like names such as 1.2.840.1136)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or (len(head) >= 8 and head[:2] in _BARE_DICOM_STARTS and head[3] == 0)


def is_image_file(path: str | Path) -> bool:
    """A file read_image can open: a supported extension, or DICOM content under any other name."""
    return file_extension(path) in SUPPORTED_EXTENSIONS or looks_like_dicom(path)


def read_image(path: str | Path, volume_slice: str = "error", volume_index: int = 0) -> np.ndarray:
    """Raw intensities of the image at `path` as a 2-D float32 array, oriented like a radiograph.

    A volume gives the plane `volume_slice` names (first, middle, last, or index: `volume_index`)
    and is refused with "error" ([Data] volume_slice). A file with another extension, or none, is
    read when its content is DICOM.
    Raises DataError naming the file when it is missing, empty, corrupt or of an unsupported type.
    """
    path = Path(path)
    ext = file_extension(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    if ext in DICOM_EXTENSIONS or (ext not in SUPPORTED_EXTENSIONS and looks_like_dicom(path)):
        reader = _read_dicom
    elif ext in NIFTI_EXTENSIONS:
        reader = _read_nifti
    elif ext in SUPPORTED_EXTENSIONS:
        reader = _read_pillow
    else:
        raise DataError(f"{path}: unsupported extension '{ext}' and not DICOM "
                        f"(supported: {' '.join(SUPPORTED_EXTENSIONS)}, or DICOM under any name)")
    try:
        image = reader(path, volume_index if volume_slice == "index" else volume_slice)
    except DataError:
        raise
    except Exception as exc:  # each decoder signals bad bytes with its own exception types
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DataError(f"{path}: cannot decode image ({reason})") from exc
    if image.ndim != 2 or min(image.shape) == 0:
        raise DataError(f"{path}: expected a 2-D image, got an array of shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def _pick_plane(path: Path, count: int, rule: str | int, what: str) -> int:
    """Index of the plane `rule` picks among `count`; never a silent guess."""
    if rule == "error":
        raise DataError(f"{path}: a volume of {count} {what}s, not a 2-D image; set [Data] volume_slice = "
                        f"first, middle, last or index (with volume_index) to use one {what}")
    index = {"first": 0, "middle": count // 2, "last": count - 1}.get(rule, rule)
    if not 0 <= index < count:
        raise DataError(f"{path}: [Data] volume_index = {rule} but the volume has {count} {what}s "
                        f"(0-{count - 1})")
    return index


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _read_pillow(path: Path, volume_slice: str | int) -> np.ndarray:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # phone/scanner JPEGs may store their rotation in EXIF only
        if img.mode in _GREY_MODES:
            return np.asarray(img)
        if img.mode in ("1", "LA", "La"):
            return np.asarray(img.convert("L"))
        return _luminance(np.asarray(img.convert("RGB")))


def _read_dicom(path: Path, volume_slice: str | int) -> np.ndarray:
    # pydicom and nibabel are imported by the readers that need them: together they cost ~0.3 s, which
    # `--mode check` on a warm cache and every other mode that decodes nothing need not pay.
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    # force=True reads files without the preamble; pixel data is what makes them usable images.
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise DataError(f"{path}: cannot decode image (a DICOM file without pixel data)")
    if not ds.file_meta.get("TransferSyntaxUID"):
        # No file meta: the encoding pydicom found while parsing is the transfer syntax.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    frames = int(ds.get("NumberOfFrames") or 1)
    index = _pick_plane(path, frames, volume_slice, "frame") if frames > 1 else 0
    arr = pixel_array(ds, index=index)
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        return _luminance(apply_color_lut(arr, ds))
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return _luminance(arr)
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds).astype(np.float32)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores dense tissue as low values
        arr = arr.max() + arr.min() - arr
    return arr


def _read_nifti(path: Path, volume_slice: str | int) -> np.ndarray:
    """NIfTI plane with the patient's head on top and their right on the image's left.

    A file with one plane gives it whatever its stored dimensionality; a 4-D file gives the volume
    and a 3-D volume the axial slice (along the last axis after reorientation to RAS) that
    `volume_slice` picks.
    """
    import nibabel as nib

    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    if data.ndim > 4 and any(n > 1 for n in data.shape[4:]):
        raise DataError(f"{path}: expected a 2-D image, got a NIfTI array of shape {img.shape}")
    data = data.reshape(data.shape[:4])
    if data.ndim == 4:
        volumes = data.shape[3]
        data = data[..., _pick_plane(path, volumes, volume_slice, "volume") if volumes > 1 else 0]
    data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    # io_orientation maps array axes to the closest RAS+ axes: after apply_orientation, array axis
    # 0 runs towards the patient's Right, 1 towards Anterior, 2 towards Superior.
    data = nib.orientations.apply_orientation(data, nib.orientations.io_orientation(img.affine))
    singleton = [axis for axis, n in enumerate(data.shape) if n == 1]
    if len(singleton) > 1:
        raise DataError(f"{path}: expected a 2-D image, got a NIfTI array of shape {img.shape}")
    if singleton:
        plane = np.squeeze(data, axis=singleton[0])
    else:
        plane = data[:, :, _pick_plane(path, data.shape[2], volume_slice, "slice")]
    # plane axes are (h, v) in R, A, S order: R-S for a frontal (coronal) image, R-A for an axial
    # slice, A-S for a lateral one. Transposing puts v on rows and h on columns; flipping rows puts
    # the superior (or anterior) end on top, flipping columns puts the patient's right (or anterior
    # side) on the image's left, as a radiograph is viewed.
    return plane.T[::-1, ::-1]
