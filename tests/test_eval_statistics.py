"""eval's intervals, agreement and calibration, predict's calibration and --mode compare, through the real CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from src.cli.main import cli
from src.data.zones import ZONES
from src.engine.metrics import HEADLINE_METRICS
from tests.conftest import write_config, write_png_dataset


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """60 learnable 32-px images of 30 patients; runs A and B share a split and are evaluated, C (another
    seed) has another split and is not evaluated."""
    root = tmp_path_factory.mktemp("stats")
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 4, (60, 6))
    scores[rng.random((60, 6)) < 0.08] = 4
    write_png_dataset(root / "data", scores, patients=[f"P{i // 2}" for i in range(60)])
    write_config(root / "config" / "config.ini", root / "data", Training={"n_epochs": 2, "learning_rate": 0.003},
                 Data={"normalization": "simple", "train_fraction": 0.5, "val_fraction": 0.25,
                       "test_fraction": 0.25}, Model={"dropout": 0.0},
                 Evaluation={"bootstrap_samples": 500, "saliency_largest_error": 0, "saliency_random": 0})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name, seed, lr in (("a", 42, 0.003), ("b", 42, 0.001), ("c", 7, 0.003)):
            result = main("--mode", "train", "--set", f"Training.run_name={name}", "--set", f"Training.seed={seed}",
                          "--set", f"Training.learning_rate={lr}")
            assert result.exit_code == 0, result.output
        for name in ("a", "b"):
            result = main("--mode", "eval", "--run", str(run_dir(root, name)))
            assert result.exit_code == 0, result.output
            (root / f"eval_{name}.txt").write_text(result.output)
        yield root
    finally:
        os.chdir(cwd)


def main(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="main.py")


def run_dir(root: Path, name: str) -> Path:
    return next((root / "models").glob(f"*_custom_cnn_{name}"))


def test_eval_reports_intervals_agreement_and_stores_the_temperature(project):
    a, output = run_dir(project, "a"), (project / "eval_a.txt").read_text()
    assert "ICC(2,1)" in output and "ECE" in output
    report = json.loads((a / "evaluation" / "metrics.json").read_text())
    split = pd.read_csv(a / "split.csv", dtype=str)
    tested = split[split["split"] == "test"]
    assert report["bootstrap"]["resampled"]["test"] == f"{tested['PatientID'].nunique()} patients"
    for split in ("val", "test"):
        values, intervals = report["metrics"][split], report["metrics_ci95"][split]
        for name in HEADLINE_METRICS:
            low, high = intervals[name]
            assert low <= values[name] <= high, (split, name)
        assert f"{values['f1_macro']:.3f} [{intervals['f1_macro'][0]:.3f}" in output
    icc = report["agreement"]["test"]["icc_2_1"]
    assert icc["ci_low"] <= icc["icc"] <= icc["ci_high"] and icc["n"] == len(tested)
    calibration = report["calibration"]
    assert calibration["test"]["overall"]["zones"] > 0 and "ece_after" in calibration["test"]["left_inf"]
    stored = torch.load(a / "best_model.pth", weights_only=True)["calibration"]
    assert stored == calibration["temperature"] and stored["val_nll_after"] <= stored["val_nll_before"]
    for name in ("agreement_test.png", "calibration_test.png"):
        assert (a / "evaluation" / name).stat().st_size > 10_000, name


def test_predict_applies_the_stored_temperature_only_when_asked(project):
    a, c = run_dir(project, "a"), run_dir(project, "c")
    tables = {}
    for calibrate in ("false", "true"):
        result = main("--mode", "predict", "--run", str(a), "--input", str(project / "data" / "images"),
                      "--output", str(project / f"scored_{calibrate}.csv"),
                      "--set", f"Evaluation.calibrate={calibrate}")
        assert result.exit_code == 0, result.output
        tables[calibrate] = pd.read_csv(project / f"scored_{calibrate}.csv", dtype={"FileID": str})
    probs = [c for c in tables["true"] if c.endswith(("_p0", "_p1", "_p2", "_p3", "_p4"))]
    assert not np.allclose(tables["true"][probs], tables["false"][probs])
    pred = [f"{zone}_pred" for zone in ZONES]
    assert tables["true"][pred].equals(tables["false"][pred])  # scaling never changes the predicted class

    never_evaluated = main("--mode", "predict", "--run", str(c), "--input", str(project / "data" / "images"),
                           "--set", "Evaluation.calibrate=true")
    assert never_evaluated.exit_code == 2 and "no fitted temperature" in never_evaluated.output


def test_compare_pairs_runs_on_the_same_split(project):
    a, b = run_dir(project, "a"), run_dir(project, "b")
    result = main("--mode", "compare", "--run", str(a), "--run", str(b))
    assert result.exit_code == 0, result.output
    assert "B - A [95% CI]" in result.output and "McNemar" in result.output
    out = project / "models" / "comparisons" / f"{a.name}__vs__{b.name}"
    document = json.loads((out / "comparison.json").read_text())
    rows = {r["metric"]: r for r in document["differences"]}
    tested = json.loads((a / "evaluation" / "metrics.json").read_text())["metrics"]["test"]
    for name in HEADLINE_METRICS:
        assert rows[name]["A"] == pytest.approx(tested[name], nan_ok=True)
        assert 0 < rows[name]["p_value"] <= 1
    assert [r["scope"] for r in document["mcnemar"]] == ["all zones", *ZONES]
    assert (out / "comparison.png").stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert "Paired differences" in page and "McNemar" in page and "data:image/png;base64," in page

    # A run against itself: every difference 0, no discordant zone.
    itself = main("--mode", "compare", "--run", str(a), "--run", str(a))
    assert itself.exit_code == 0
    same = json.loads((project / "models" / "comparisons" / f"{a.name}__vs__{a.name}" / "comparison.json").read_text())
    assert all(r["difference"] == 0 or np.isnan(r["difference"]) for r in same["differences"])
    assert all(r["only_A_right"] == r["only_B_right"] == 0 and r["p_value"] == 1 for r in same["mcnemar"])


def test_compare_refuses_runs_on_different_splits(project):
    result = main("--mode", "compare", "--run", str(run_dir(project, "a")), "--run", str(run_dir(project, "c")))
    assert result.exit_code == 2
    message = [line for line in result.output.splitlines() if "tested on different images" in line]
    assert len(message) == 1 and "same split" in message[0]
    assert main("--mode", "eval", "--run", "x", "--run", "y").exit_code == 2
