"""scripts/make_demo_data.py: layout, determinism, label mix and opacities that follow the labels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import make_demo_data as demo  # noqa: E402

from src.data.zones import UNKNOWN, ZONES  # noqa: E402

COLUMNS = ["FileID", *ZONES, "csi", "PatientID"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.write_demo_data(out, n_images=12, size=64, seed=3)
    return out


@pytest.fixture(scope="module")
def anatomy() -> demo.Anatomy:
    return demo.fit_anatomy(demo.load_phantom(), 64)


def test_same_seed_gives_same_bytes_whatever_the_workers(demo_dir, tmp_path):
    demo.write_demo_data(tmp_path, n_images=12, size=64, seed=3, workers=2)
    assert _files(tmp_path) == _files(demo_dir)


def test_other_seed_gives_other_labels_and_images(demo_dir, tmp_path):
    demo.write_demo_data(tmp_path, n_images=12, size=64, seed=4)
    ours, theirs = _files(tmp_path), _files(demo_dir)
    assert ours.keys() == theirs.keys()
    assert ours["labels.csv"] != theirs["labels.csv"]
    assert all(ours[name] != theirs[name] for name in ours if name.endswith(".png"))


def test_layout_matches_real_exports(demo_dir):
    text = (demo_dir / "labels.csv").read_text()
    assert text.splitlines()[0] == ";".join(COLUMNS)
    table = pd.read_csv(demo_dir / "labels.csv", sep=";", dtype=str, keep_default_na=False)
    assert list(table.columns) == COLUMNS and len(table) == 12
    assert table["FileID"].str.fullmatch(r"\d+").all()

    zones = table[list(ZONES)]
    assert zones.isin(["", "0", "1", "2", "3"]).all().all()
    assert (zones == "").any().any(), "some zones should be Unknown (empty)"
    for _, row in table.iterrows():
        known = [int(row[z]) for z in ZONES if row[z] != ""]
        if known:
            assert float(row["csi"]) == round(np.mean(known), 3)
        else:
            assert row["csi"] == ""

    for file_id in table["FileID"]:
        png = (demo_dir / "images" / f"{file_id}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        # IHDR: width, height (big-endian), bit depth 16, colour type 0 (grayscale).
        assert png[16:26] == (64).to_bytes(4, "big") * 2 + bytes([16, 0])
        pixels = np.asarray(Image.open(demo_dir / "images" / f"{file_id}.png"))
        assert pixels.dtype == np.uint16 and pixels.shape == (64, 64) and pixels.max() > 255


def test_failed_run_leaves_no_stale_labels(tmp_path):
    (tmp_path / "labels.csv").write_text("FileID;right_sup\n1;0\n")
    (tmp_path / "images" / f"{demo.FIRST_FILE_ID + 1}.png").mkdir(parents=True)  # cannot be written
    with pytest.raises(OSError):
        demo.write_demo_data(tmp_path, n_images=3, size=32, seed=0)
    assert not (tmp_path / "labels.csv").exists()


def test_cli_writes_what_it_is_asked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0 and "--n-images" in capsys.readouterr().out

    demo.main(["--out", str(tmp_path), "--n-images", "3", "--size", "32", "--seed", "1", "--workers", "1"])
    table = pd.read_csv(tmp_path / "labels.csv", sep=";")
    assert len(table) == 3
    assert all(Image.open(tmp_path / "images" / f"{i}.png").size == (32, 32) for i in table["FileID"])


def test_labels_have_a_realistic_mix():
    scores, patients = demo.draw_labels(200, np.random.default_rng(0))
    assert scores.shape == (200, 6)
    assert 0.05 < (scores == UNKNOWN).mean() < 0.16
    counts = np.bincount(scores[scores != UNKNOWN], minlength=4)
    assert counts[0] > counts[2] > counts[3] > 0 and counts[1] > counts[2]

    # Congestion is systemic: the zones of one image agree more than chance, but not fully.
    known = np.where(scores == UNKNOWN, np.nan, scores)
    corr = pd.DataFrame(known).corr().to_numpy()[np.triu_indices(6, k=1)]
    assert 0.2 < corr.mean() < 0.8

    images_per_patient = pd.Series(patients).value_counts()
    assert images_per_patient.max() <= 3 and (images_per_patient > 1).any()


def test_zones_are_oriented_like_a_radiograph(anatomy):
    rows, cols = np.indices(anatomy.zone_masks.shape[1:])
    centre_col = [cols[mask].mean() for mask in anatomy.zone_masks]
    centre_row = [rows[mask].mean() for mask in anatomy.zone_masks]
    # The patient's right lung is on the image's left.
    assert max(centre_col[0::2]) < min(centre_col[1::2])
    assert centre_row[0] < centre_row[2] < centre_row[4] and centre_row[1] < centre_row[3] < centre_row[5]
    # Head up: the apices are narrower than the bases.
    assert anatomy.zone_masks[0:2].sum() < anatomy.zone_masks[4:6].sum()
    # The heart (patient's left) makes the image's right half denser at the level of the lower zones.
    lower = anatomy.zone_masks[4:6].any(axis=(0, 2))
    half = anatomy.attenuation.shape[1] // 2
    assert anatomy.attenuation[lower, half:].mean() > anatomy.attenuation[lower, :half].mean()


@pytest.mark.parametrize("zone", range(6))
def test_zone_opacity_grows_with_its_score(anatomy, zone):
    means = []
    for score in range(4):
        scores = np.zeros(6, dtype=int)
        scores[zone] = score
        image = demo.render_image(anatomy, scores, seed=7)
        means.append(image[anatomy.zone_masks[zone]].mean())
    assert np.all(np.diff(means) > 0), means


def test_zone_brightness_tracks_labels_across_images(anatomy):
    scores, _ = demo.draw_labels(60, np.random.default_rng(1))
    by_score = [[] for _ in range(4)]
    for seed, image_scores in enumerate(scores):
        image = demo.render_image(anatomy, image_scores, seed).astype(float)
        image = (image - image.min()) / (image.max() - image.min())
        for zone, score in enumerate(image_scores):
            if score != UNKNOWN:
                by_score[score].append(image[anatomy.zone_masks[zone]].mean())
    assert np.all(np.diff([np.mean(values) for values in by_score]) > 0)


def test_lung_masks_are_the_posed_zones_named_by_patient_side(demo_dir, anatomy, tmp_path):
    from src.config.loader import apply_overrides, load_config
    from src.data.cache import CacheSettings, build_cache
    from src.data.masks import build_zone_maps

    file_ids = pd.read_csv(demo_dir / "labels.csv", sep=";")["FileID"].astype(str).tolist()
    for file_id in file_ids:
        for side, zones in (("right", anatomy.zone_masks[0::2]), ("left", anatomy.zone_masks[1::2])):
            lung = np.asarray(Image.open(demo_dir / "masks" / f"{file_id}_{side}_lung_mask.png"))
            assert set(np.unique(lung)) == {0, 255}
            drawn = zones.any(axis=0)
            # Posed by a few degrees and percent: mostly where the zones were drawn, never far off.
            assert (drawn & (lung > 0)).sum() > 0.7 * drawn.sum()
            assert abs(int((lung > 0).sum()) - int(drawn.sum())) < 0.2 * drawn.sum()
    data = apply_overrides(load_config(None), {"Data.image_size": 64, "Data.mask_dir": str(demo_dir / "masks"),
                                               "Data.cache_dir": str(tmp_path)}).data
    images = build_cache([demo_dir / "images" / f"{i}.png" for i in file_ids], CacheSettings.from_config(data),
                         tmp_path)
    zones = build_zone_maps(images, file_ids, range(len(file_ids)), data, "lung")
    assert zones.naming["patient side"] == file_ids


def test_brixia_layout_runs_end_to_end_and_previews(tmp_path, monkeypatch):
    """make demo LAYOUT=brixia: DICOM files and metadata_global_v2.csv that label_format = brixia reads as
    drawn (zones A-F, the consensus test set as the test split); check --preview and
    scripts/debug/debug_images.py draw the model's inputs."""
    from click.testing import CliRunner

    from src.cli.main import cli
    from src.data.brixia import read_brixia
    from tests.conftest import write_config

    out = tmp_path / "demo"
    labels = demo.write_demo_data(out, n_images=12, size=32, seed=3, layout="brixia")
    assert labels.name == "metadata_global_v2.csv"
    assert sorted(p.suffix for p in (out / "images").iterdir()) == [".dcm"] * 12
    scores, _ = demo.draw_labels(12, np.random.default_rng(np.random.SeedSequence(3).spawn(1)[0]), unknown=False)
    table = read_brixia(labels)
    assert (table[list(ZONES)].to_numpy() == scores).all() and set(table["split"]) <= {"test", ""}
    raw = pd.read_csv(labels, sep=";", dtype=str)
    assert raw["BrixiaScore"].str.fullmatch(r"[0-3]{6}").all()

    write_config(tmp_path / "config" / "config.ini", out, Data={
        "labels_csv": labels, "label_format": "brixia", "image_size": 32, "mask_dir": out / "masks",
        "train_fraction": 0.6, "val_fraction": 0.4, "test_fraction": 0.0})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--mode", "check", "--preview", "4", "--output", "sheet.png"],
                                prog_name="main.py")
    assert result.exit_code == 0, result.output
    assert "Formats       .dcm 12" in result.output and "sheet.png: 4 images" in result.output
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape[0] > 500 and sheet.shape[1] > 500 and sheet.std() > 20  # a picture, not a blank

    sys.path.insert(0, str(ROOT / "scripts" / "debug"))
    import debug_images

    assert debug_images.main(["--n", "2", "--output", "debug.png"]) == 0
    assert Image.open(tmp_path / "debug.png").size[0] > 300


def test_simulated_readers_and_outcome(tmp_path):
    labels = demo.write_demo_data(tmp_path, n_images=40, size=32, seed=2, readers=3, outcome=True)
    table = pd.read_csv(labels, sep=";", dtype=str, keep_default_na=False)
    truth = pd.read_csv(tmp_path / "truth.csv", sep=";", dtype=str, keep_default_na=False)
    assert [c for c in table if "@" in c] == [f"{z}@r{k}" for k in (1, 2, 3) for z in ZONES]
    assert set(table["AHF"]) <= {"0", "1"}
    for k in (1, 2, 3):
        given = table[[f"{z}@r{k}" for z in ZONES]].to_numpy()
        true = truth[list(ZONES)].to_numpy()
        assert ((given == "") == (true == "")).all()  # Unknown stays Unknown
        known = true != ""
        off = np.abs(given[known].astype(int) - true[known].astype(int))
        assert off.max() <= 1 and 0 < off.mean() < 2 * demo.READER_ERROR[k - 1]  # one grade, about as often as set
