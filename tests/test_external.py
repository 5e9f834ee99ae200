"""eval --labels: an external set scored beside the internal test split, overlap refused, three readers
whose agreement is known by construction, and an outcome whose AUROC is known by construction. One
tiny run is trained for the module and evaluated several ways."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from src.cli.main import cli
from src.data.zones import ZONES
from src.engine.metrics import HEADLINE_METRICS
from tests.conftest import REPO, write_config, write_png_dataset

SITE = 30  # external images


def main(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="main.py")


def outcome_of(truth: np.ndarray) -> np.ndarray:
    """AHF by construction: CSI above 1 is positive, except images 0 and 1 (flipped), so that the
    truth's AUROC is neither 0.5 nor 1 and is known by counting pairs."""
    outcome = (truth.mean(axis=1) > 1).astype(int)
    outcome[[0, 1]] = 1 - outcome[[0, 1]]
    return outcome


def pair_auroc(scores: np.ndarray, outcome: np.ndarray) -> float:
    """AUROC by its definition: the share of (positive, negative) pairs ranked right, ties half."""
    pairs = [(p, n) for p, n in itertools.product(scores[outcome == 1], scores[outcome == 0])]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A run trained once (40 images, 1 epoch) and evaluated on site_b: 30 other images scored by three
    readers, r1 and r2 giving the true scores (0-2) and r3 every zone one grade higher, with an AHF column."""
    root = tmp_path_factory.mktemp("external")
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, (40, 6))
    write_png_dataset(root / "data", scores, patients=[f"P{i // 2}" for i in range(40)])
    write_config(root / "config" / "config.ini", root / "data", Training={"n_epochs": 1, "learning_rate": 0.003},
                 Data={"normalization": "simple", "consensus": "median"},
                 Evaluation={"bootstrap_samples": 200, "saliency_largest_error": 0, "saliency_random": 0})
    truth = rng.integers(0, 3, (SITE, 6))
    write_png_dataset(root / "site_b", truth, seed=9)
    table = pd.DataFrame({"FileID": [str(1000 + i) for i in range(SITE)]})
    for reader, shift in (("r1", 0), ("r2", 0), ("r3", 1)):
        for z, zone in enumerate(ZONES):
            table[f"{zone}@{reader}"] = truth[:, z] + shift
    table["AHF"] = outcome_of(truth)
    table.to_csv(root / "site_b" / "site_b.csv", sep=";", index=False)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        trained = main("--mode", "train")
        assert trained.exit_code == 0, trained.output
        run = next((root / "models").iterdir())
        scored = main("--mode", "eval", "--run", str(run), "--labels", "site_b/site_b.csv", "--image-dir",
                      "site_b/images", "--set", "Evaluation.outcome_column=AHF")
        assert scored.exit_code == 0, scored.output
        yield root, run, truth, scored.output
    finally:
        os.chdir(cwd)


def test_external_set_scored_beside_the_internal_test_split(project):
    root, run, truth, output = project
    out = run / "evaluation" / "site_b"
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]) == {"test", "site_b"} and report["images"] == SITE
    predictions = pd.read_csv(out / "predictions_site_b.csv", dtype={"FileID": str})
    assert len(predictions) == SITE
    # The target is the readers' median: r1 = r2 = truth outvote r3.
    assert (predictions[[f"{z}_true" for z in ZONES]].to_numpy() == truth).all()
    differences = {row["metric"]: row for row in report["site_comparison"]["differences"]}
    assert set(differences) == set(HEADLINE_METRICS)
    for name in ("f1_macro", "qwk", "csi_mae"):
        row = differences[name]
        assert row["external"] == pytest.approx(report["metrics"]["site_b"][name])
        assert row["internal"] == pytest.approx(report["metrics"]["test"][name])
        assert row["ci_low"] <= row["difference"] <= row["ci_high"] and 0 < row["p_value"] <= 1
    calibration = {row["site"]: row for row in report["site_comparison"]["calibration"]}
    assert set(calibration) == {"test", "site_b"} and all("ece_after" in row for row in calibration.values())
    assert "No image of this set is among the run's train and val images" in output
    assert {"agreement_site_b.png", "calibration_site_b.png", "confusion_zones_site_b.png", "readers_site_b.png",
            "roc_site_b.png", "predictions_test.csv"} <= {p.name for p in out.iterdir()}


def test_three_readers_whose_agreement_is_known(project):
    root, run, truth, _ = project
    out = run / "evaluation" / "site_b"
    study = json.loads((out / "metrics.json").read_text())["readers"]
    scores = {(row["left_out"], row["who"]): row for row in study["scores"]}
    shifted = np.minimum(truth + 1, 3)  # what r3 gave
    # Without r3 the others' median is the truth; r3 is one grade off everywhere: CSI MAE exactly 1.
    assert scores[("r3", "r3")]["csi_mae"] == pytest.approx(1.0)
    assert scores[("r3", "r3")]["qwk"] == pytest.approx(
        cohen_kappa_score(truth.ravel(), shifted.ravel(), weights="quadratic"))
    # Without r1, the median of r2 (truth) and r3 (truth + 1) is truth + 1 (a half rounds up): r1 is off by one.
    for reader in ("r1", "r2"):
        assert scores[(reader, reader)]["csi_mae"] == pytest.approx(1.0)
        assert scores[(reader, reader)]["qwk"] == pytest.approx(
            cohen_kappa_score(shifted.ravel(), truth.ravel(), weights="quadratic"))
    # The model against the consensus without r3 (the truth, which is also the target) scores as the site does.
    site = json.loads((out / "metrics.json").read_text())["metrics"]["site_b"]
    assert scores[("r3", "model")]["csi_mae"] == pytest.approx(site["csi_mae"])
    assert scores[("r3", "model")]["qwk"] == pytest.approx(site["qwk"])
    ranges = {row["metric"]: row for row in study["range"]}
    assert ranges["CSI MAE"]["readers_min"] == ranges["CSI MAE"]["readers_max"] == pytest.approx(1.0)
    assert ranges["CSI MAE"]["position"] in ("within the readers' range", "better than every reader",
                                            "worse than every reader")
    for row in study["scores"]:
        assert row["qwk_ci_low"] <= row["qwk"] <= row["qwk_ci_high"]


def test_outcome_whose_auroc_is_known(project):
    root, run, truth, output = project
    out = run / "evaluation" / "site_b"
    outcome = json.loads((out / "metrics.json").read_text())["outcome"]
    auroc = {row["index"]: row for row in outcome["auroc"]}
    ahf = outcome_of(truth)
    csi = truth.mean(axis=1)
    known = pair_auroc(csi, ahf)
    assert 0.5 < known < 1  # by construction: two flipped images
    for reader in ("r1", "r2"):  # their CSI is the true CSI
        assert auroc[reader]["auroc"] == pytest.approx(known)
        assert auroc[reader]["auroc"] == pytest.approx(roc_auc_score(ahf, csi))
    assert auroc["r3"]["auroc"] == pytest.approx(roc_auc_score(ahf, np.minimum(truth + 1, 3).mean(axis=1)))
    predictions = pd.read_csv(out / "predictions_site_b.csv", dtype={"FileID": str})
    assert auroc["model"]["auroc"] == pytest.approx(roc_auc_score(ahf, predictions["csi_pred"]), abs=1e-3)
    for row in auroc.values():
        assert row["ci_low"] <= row["auroc"] <= row["ci_high"]
    assert outcome["positives"] == ahf.sum() and outcome["images"] == SITE
    rules = {(row["scorer"], row["rule"]) for row in outcome["operating_points"]}
    assert ("model", "Youden point") in rules and ("r1", "CSI > 1.3 (not AHF low)") in rules
    youden = next(r for r in outcome["operating_points"] if r["rule"] == "Youden point")
    called = predictions["csi_pred"].to_numpy() > round(youden["threshold"], 4)  # the CSV keeps 4 decimals
    assert youden["sensitivity"] == pytest.approx(called[ahf == 1].mean())
    assert youden["specificity"] == pytest.approx((~called[ahf == 0]).mean())
    paired = {row["reader"]: row for row in outcome["model_vs_readers"]}
    assert paired["r1"]["difference"] == pytest.approx(auroc["model"]["auroc"] - known)
    assert f"AUROC of r1's CSI {known:.3f}" in output


def test_overlap_refused_by_file_and_by_pixels(project, tmp_path):
    root, run, _, _ = project
    split = pd.read_csv(run / "split.csv", dtype=str)
    trained = split[split["split"] == "train"]["FileID"].tolist()
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "data" / "images" / f"{trained[1]}.png", images / "renamed.png")  # the same pixels
    labels = tmp_path / "mixed.csv"
    labels.write_text("FileID;right_sup;left_sup;right_mid;left_mid;right_inf;left_inf;path\n"
                      f"{trained[0]};0;1;2;1;0;1;{root / 'data' / 'images' / f'{trained[0]}.png'}\n"
                      "renamed;0;1;2;1;0;1;\n")
    args = ("--mode", "eval", "--run", str(run), "--labels", str(labels), "--image-dir", str(images),
            "--set", "Data.allow_outside_paths=true")
    refused = main(*args)
    assert refused.exit_code == 2
    message = [line for line in refused.output.splitlines() if "ERROR" in line]
    assert len(message) == 1 and "2 of its images trained or validated the model" in message[0]
    assert f"{trained[0]} (same file as {trained[0]})" in message[0]
    assert f"renamed (same pixels as {trained[1]})" in message[0] and "--allow-overlap" in message[0]
    assert not (run / "evaluation" / "mixed").exists()


def test_external_report_opens_offline(project, chromium, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from chromium import Browser

    _, run, _, _ = project
    with Browser(chromium) as browser:
        browser.open(run / "evaluation" / "site_b" / "report.html")
        facts = browser.evaluate("""({sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
            images: Array.from(document.images).map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0}))})""")
        errors = browser.errors
    assert errors == [] and all(image["loaded"] for image in facts["images"])
    assert {"readers_site_b.png", "roc_site_b.png", "agreement_site_b.png", "calibration_site_b.png",
            "confusion_zones_site_b.png", "training_curves.png"} <= {image["alt"] for image in facts["images"]}
    ours = ["summary", "external-validation", "readers", "outcome"]
    assert [s for s in facts["sections"] if s in ours] == ours
