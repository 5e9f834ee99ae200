"""Lung masks: reading (PNG pairs, label images, NIfTI), sides from position, validation, zone maps,
the check report, mask pooling, augmentation of masks, and training/eval with masks through main.py."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from PIL import Image

from src.config.loader import apply_overrides, load_config
from src.data.augment import BatchAugmenter
from src.data.cache import CacheSettings, build_cache
from src.data.load import load_data
from src.data.masks import build_zone_maps, grid_zone_maps
from src.data.zones import ZONES
from src.models.heads import ZoneHead
from src.utils.errors import MaskError
from tests.conftest import invoke_main, run_main, write_config, write_tiny_dataset

SIZE = 32
# Image columns of each lung: the patient's right lung on the image's left.
RIGHT_COLS, LEFT_COLS = slice(2, 14), slice(18, 30)


def lungs_of(index: int) -> tuple[np.ndarray, np.ndarray]:
    """(lung on the image's left, lung on the image's right) of image `index`: their heights differ."""
    right, left = np.zeros((2, SIZE, SIZE), np.uint8)
    right[2 + index % 4:29, RIGHT_COLS] = 255
    left[5:26 - index % 3, LEFT_COLS] = 255
    return right, left


def write_pair_masks(masks: Path, count: int = 24, patient_side: range | set = range(24)) -> Path:
    """Upstream's two PNGs per image, named by patient side for the indices in `patient_side`, else by
    image side (the lung on the image's left called left)."""
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        on_left, on_right = lungs_of(i)
        names = ("right", "left") if i in patient_side else ("left", "right")
        for name, lung in zip(names, (on_left, on_right)):
            Image.fromarray(lung).save(masks / f"{1000 + i}_{name}_lung_mask.png")
    return masks


def nifti_of(plane: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI file that src/data/readers.py reads back as `plane` (radiograph orientation)."""
    return nib.Nifti1Image(np.ascontiguousarray(plane[::-1, ::-1].T)[:, :, None], np.eye(4))


def write_label_masks(masks: Path, kind: str) -> Path:
    """One label image per FileID (0 background, 7 and 3 for the lungs), as PNG or NIfTI."""
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(24):
        on_left, on_right = lungs_of(i)
        labels = np.where(on_left > 0, 7, np.where(on_right > 0, 3, 0)).astype(np.uint8)
        if kind == "png":
            Image.fromarray(labels).save(masks / f"{1000 + i}.png")
        else:
            nib.save(nifti_of(labels.astype(np.float32)), masks / f"{1000 + i}.nii.gz")
    return masks


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The tiny dataset with upstream masks named by patient side, and a project whose config uses them."""
    data = write_tiny_dataset(tmp_path / "data")
    write_pair_masks(data / "masks")
    write_config(tmp_path / "project" / "config" / "config.ini", data, Data={"mask_dir": data / "masks"},
                 Training={"n_epochs": 1})
    return tmp_path / "project"


def error_lines(result) -> list[str]:
    """What a run printed on stderr besides its progress bars."""
    return [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]


def config_of(project: Path, **overrides):
    return apply_overrides(load_config(project / "config" / "config.ini"), overrides)


def expected_map(index: int, split: str = "lung") -> np.ndarray:
    """The zone map of image `index` worked out by hand: each lung's rows cut into thirds."""
    out = np.zeros((SIZE, SIZE), np.uint8)
    for side, lung in enumerate(lungs_of(index)):
        rows = np.nonzero(lung.any(axis=1))[0]
        top, bottom = (rows[0], rows[-1] + 1) if split == "lung" else (0, SIZE)
        for r in rows:
            third = min(int(3 * (r - top) / (bottom - top)), 2)
            out[r, lung[r] > 0] = 2 * third + side + 1
    return out


def test_each_lung_is_cut_into_thirds_of_its_own_height(project):
    bundle = load_data(config_of(project))
    for row in bundle.table.itertuples():
        np.testing.assert_array_equal(bundle.zones[row.cache_index][0], expected_map(int(row.FileID) - 1000))
    # The two lungs of one image have different heights, so their thirds are cut at different rows.
    first = expected_map(1)
    assert not np.array_equal(first[:, RIGHT_COLS] > 2, first[:, LEFT_COLS] > 2)


def test_image_thirds_for_parity_with_upstream(project):
    bundle = load_data(config_of(project, **{"Model.zone_split": "image"}))
    row = bundle.table.iloc[0]
    np.testing.assert_array_equal(bundle.zones[row.cache_index][0], expected_map(int(row.FileID) - 1000, "image"))


@pytest.mark.parametrize("layout", ["image side", "png labels", "nifti labels"])
def test_every_layout_gives_the_same_zones(project, tmp_path, layout):
    reference = load_data(config_of(project))
    masks = tmp_path / layout.replace(" ", "_")
    if layout == "image side":
        write_pair_masks(masks, patient_side=set())
    else:
        write_label_masks(masks, layout.split()[0])
    bundle = load_data(config_of(project, **{"Data.mask_dir": str(masks)}))
    found = {name: len(ids) for name, ids in bundle.zones.naming.items() if ids}
    assert found == {"image side" if layout == "image side" else "label image": 24}
    rows = np.arange(len(bundle.cache.images))
    np.testing.assert_array_equal(bundle.zones[rows], reference.zones[rows])


def test_masks_are_decoded_once_into_the_cache_with_the_image_geometry(project, tmp_path):
    first = load_data(config_of(project))
    again = load_data(config_of(project))
    assert first.zones.masks.decoded == 48 and again.zones.masks.decoded == 0
    # pad: a 20x32 image (and its masks) sits in rows 6-25 of the 32x32 input, and so do its zones.
    gradient = 5000 + 300 * np.add.outer(np.arange(20), np.arange(32))
    Image.fromarray(gradient.astype(np.uint16)).save(tmp_path / "wide.png")
    masks = tmp_path / "wide_masks"
    masks.mkdir()
    for name, cols in (("right", RIGHT_COLS), ("left", LEFT_COLS)):
        lung = np.zeros((20, 32), np.uint8)
        lung[:, cols] = 1
        Image.fromarray(lung).save(masks / f"wide_{name}_lung_mask.png")
    data = config_of(project, **{"Data.resize_mode": "pad", "Data.mask_dir": str(masks),
                                 "Data.cache_dir": str(tmp_path / "cache")}).data
    images = build_cache([tmp_path / "wide.png"], CacheSettings.from_config(data), data.cache_dir)
    padded = build_zone_maps(images, ["wide"], [0], data, "lung")[0][0]
    filled = np.nonzero(padded.any(axis=1))[0]
    assert (filled[0], filled[-1]) == (6, 25) and set(np.unique(padded)) == set(range(7))
    image_rows = np.nonzero(images.images[0].any(axis=1))[0]  # where the image itself landed
    assert (image_rows[0], image_rows[-1]) == (6, 25)
    grid = grid_zone_maps(images, ["wide"], [0], data)[0][0]
    assert set(np.unique(grid[6:26])) == set(range(1, 7)) and not grid[:6].any() and not grid[26:].any()


def test_mixed_naming_is_refused_naming_five_file_ids(project, tmp_path):
    masks = write_pair_masks(tmp_path / "mixed", patient_side=set(range(7)))
    config = project / "config" / "mixed.ini"
    config.write_text((project / "config" / "config.ini").read_text().replace(
        str(project.parent / "data" / "masks"), str(masks)))
    result = run_main("--mode", "check", "--config", str(config), cwd=project)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "Traceback" not in result.stderr
    line = error_lines(result)[0]
    assert str(masks) in line
    assert "by image side for 17" in line and "by patient side for 7" in line
    assert "1000, 1001, 1002, 1003, 1004, ..." in line and "1005" not in line


@pytest.mark.parametrize("problem, fragment", [
    ("missing", "1003_right_lung_mask.png: lung mask not found"),
    ("one of the pair", "1003_left_lung_mask.png: lung mask not found"),
    ("empty", "1003_right_lung_mask.png: lung mask is empty"),
    ("not binary", "1003_right_lung_mask.png: mask has 2 non-zero values"),
    ("wrong size", "1003_right_lung_mask.png: mask is 16x32 (HxW) but its image is 32x32"),
])
def test_a_bad_mask_stops_with_one_line_naming_the_file(project, problem, fragment):
    masks = project.parent / "data" / "masks"
    target = masks / "1003_right_lung_mask.png"
    if problem == "missing":
        target.unlink()
        (masks / "1003_left_lung_mask.png").unlink()
    elif problem == "one of the pair":
        (masks / "1003_left_lung_mask.png").unlink()
    else:
        lung = np.asarray(Image.open(target)).copy()
        if problem == "empty":
            lung[:] = 0
        elif problem == "not binary":
            lung[10, RIGHT_COLS] = 128
        else:
            lung = lung[:16]
        Image.fromarray(lung).save(target)
    result = run_main("--mode", "check", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(error_lines(result)) == 1 and fragment in error_lines(result)[0], result.stderr


def test_missing_masks_can_fall_back_to_the_grid(project):
    for name in ("1003_right_lung_mask.png", "1003_left_lung_mask.png"):
        (project.parent / "data" / "masks" / name).unlink()
    with pytest.raises(MaskError, match="on_missing_mask = grid"):
        load_data(config_of(project))
    bundle = load_data(config_of(project, **{"Data.on_missing_mask": "grid"}))
    assert bundle.zones.grid == ["1003"]
    row = bundle.table.set_index("FileID").loc["1003", "cache_index"]
    expected = np.repeat(np.repeat([[1, 2], [3, 4], [5, 6]], [11, 11, 10], axis=0), 16, axis=1)
    np.testing.assert_array_equal(bundle.zones[row][0], expected)


def test_check_reports_coverage_naming_and_lung_areas(project):
    result = run_main("--mode", "check", cwd=project)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Lung masks"))
    area = np.mean([[(lung > 0).mean() for lung in lungs_of(i)] for i in range(24)], axis=0)
    assert "100% of images with lung masks (0 on the grid)" in line and "named by patient side 24" in line
    assert f"lung area right {area[0]:.1%} / left {area[1]:.1%}" in line


def test_mask_pooling_averages_each_zones_own_cells():
    torch.manual_seed(0)
    head = ZoneHead(4, pooling="mask").eval()
    features = torch.randn(2, 4, 4, 4)
    zones = torch.zeros(2, 6, 32, 32)
    zones[:, 0, :8, :8] = 1  # feature cell (0, 0)
    zones[:, 1, :8, 8:24] = 1  # cells (0, 1) and (0, 2)
    zones[:, 2:, 16:, :] = 1
    logits = head(features, zones)
    classifiers = [c[1] for c in head.classifiers]
    torch.testing.assert_close(logits[:, 0], classifiers[0](features[:, :, 0, 0]))
    torch.testing.assert_close(logits[:, 1], classifiers[1](features[:, :, 0, 1:3].mean(-1)))
    torch.testing.assert_close(logits[:, 5], classifiers[5](features[:, :, 2:, :].mean((2, 3))))


def _augmenter(seed: int = 0, **values):
    cfg = apply_overrides(load_config(None), {f"Augmentation.{k}": v for k, v in {
        "rotation_degrees": 0, "scale": 0, "translate": 0, "brightness": 0, "contrast": 0, "gamma": 0,
        "noise_std": 0, "erasing_probability": 0, "horizontal_flip": 0, **values}.items()})
    return BatchAugmenter(cfg.augmentation, seed)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels are exactly their right_sup mask, with their six masks after them."""
    maps = torch.from_numpy(np.stack([expected_map(i) for i in range(4)]))
    masks = (maps[:, None] == torch.arange(1, 7)[None, :, None, None]).float()
    images = masks[:, :1]  # intensities 0..1: the augmenter works before the normalisation
    return torch.cat([images, masks], 1), torch.arange(6).repeat(4, 1)


def test_the_same_affine_moves_image_and_masks():
    inputs, targets = _batch()
    out, out_targets = _augmenter(seed=3, rotation_degrees=20, scale=0.2, translate=0.1)(inputs, targets)
    image = out[:, 0]
    assert not torch.allclose(out[:, 1], inputs[:, 1])
    torch.testing.assert_close(image, out[:, 1], atol=1e-5, rtol=0)
    assert torch.equal(out_targets, targets)


def test_a_flip_swaps_the_lungs_with_the_labels():
    inputs, targets = _batch()
    out, out_targets = _augmenter(horizontal_flip=1.0)(inputs, targets)
    assert out_targets[0].tolist() == [ZONES.index(z) for z in ("left_sup", "right_sup", "left_mid", "right_mid",
                                                                  "left_inf", "right_inf")]
    for zone in range(6):  # zone k's mask is the mirrored lung's, still where zone k's label's pixels are
        mirrored = zone + 1 if zone % 2 == 0 else zone - 1
        torch.testing.assert_close(out[:, 1 + zone], inputs[:, 1 + mirrored].flip(-1))
    # The right lung's zones lie on the image's left after the flip too.
    cols = torch.arange(SIZE, dtype=torch.float32)
    assert ((out[:, 1].sum(1) * cols).sum(-1) / out[:, 1].sum((1, 2)) < SIZE / 2).all()


def test_train_and_eval_with_masks(project):
    train = run_main("--mode", "train", "--set", "Augmentation.horizontal_flip=0.5", cwd=project)
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = next((project / "models").iterdir())
    # The modes after the training process run in this one (the same CLI, without a Python start-up each).
    evaluation = invoke_main("--mode", "eval", cwd=project)
    assert evaluation.exit_code == 0, evaluation.output[-3000:]
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert "test" in json.dumps(metrics)
    figures = sorted((run_dir / "evaluation" / "saliency").glob("*.png"))
    assert figures
    # predict reads the masks of the images it scores (--masks), and refuses to guess without them.
    checkpoint = str(run_dir / "best_model.pth")
    masks = str(project.parent / "data" / "masks")
    refused = run_main("--mode", "predict", "--checkpoint", checkpoint, "--input", "../data/images",
                       "--masks", "", cwd=project)
    assert refused.returncode == 2 and "trained with lung masks" in error_lines(refused)[0]
    assert len(error_lines(refused)) == 1

    def main(*args: str) -> None:
        result = invoke_main(*args, cwd=project)
        assert result.exit_code == 0, result.output[-3000:]

    main("--mode", "predict", "--checkpoint", checkpoint, "--input", "../data/images", "--masks", masks,
         "--output", "with_masks.csv")
    assert len((project / "with_masks.csv").read_text().splitlines()) == 25
    main("--mode", "predict", "--checkpoint", checkpoint, "--input", "../data/images", "--masks", "",
         "--set", "Data.on_missing_mask=grid", "--set", "Evaluation.tta=flip", "--output", "grid.csv")
    assert (project / "grid.csv").read_text() != (project / "with_masks.csv").read_text()
    main("--mode", "explain", "--checkpoint", checkpoint, "--input", "../data/images", "--masks", masks,
         "--output", "explained")
    assert len(list((project / "explained").glob("1*.png"))) == 24
    # Exported, the model takes the zone masks as a second input named in its metadata, and scores
    # like PyTorch through onnxruntime.
    for fmt in ("onnx", "torchscript"):
        main("--mode", "export", "--checkpoint", checkpoint, "--format", fmt)
    session = onnxruntime.InferenceSession(str(run_dir / "best_model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "zone_masks"]
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["csi_predictor"])
    assert metadata["mask_input"].startswith("zone_masks: float32 [batch, zones, 32, 32]")
    main("--mode", "predict", "--runtime", "onnx", "--checkpoint", str(run_dir / "best_model.onnx"),
         "--input", "../data/images", "--masks", masks, "--output", "onnx.csv")
    torch_table, onnx_table = (pd.read_csv(project / name) for name in ("with_masks.csv", "onnx.csv"))
    probabilities = [f"{zone}_p{c}" for zone in ZONES for c in range(5)]
    np.testing.assert_allclose(onnx_table[probabilities], torch_table[probabilities], atol=2e-5)


@pytest.mark.parametrize("focus", ["zero_mask", "attention_mask"])
def test_upstream_masking_runs_one_backbone_pass_per_masked_zone(focus):
    from src.models.factory import ATTENTION_FLOOR, build_model

    cfg = apply_overrides(load_config(None), {"Model.model_arch": "custom_cnn", "Model.pretrained": False,
                                              "Data.image_size": SIZE, "Data.mask_dir": "masks",
                                              "Model.zone_focus": focus})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs, _ = _batch()
    image, zones = inputs[:, :1], inputs[:, 1:]
    calls = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        logits = model(inputs)
        assert calls == [6 * len(inputs)]  # the six passes run as one batch of six times the images
        for zone in range(6):
            weight = zones[:, zone:zone + 1]
            if focus == "attention_mask":
                weight = ATTENTION_FLOOR + (1 - ATTENTION_FLOOR) * weight
            pooled = model.backbone(image * weight).mean(dim=(2, 3))
            torch.testing.assert_close(logits[:, zone], model.head.classifiers[zone](pooled), atol=1e-5, rtol=1e-4)
