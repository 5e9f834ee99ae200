"""Cross-validation, ensembles and test-time augmentation on tiny real data and real main.py runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from src.config.loader import apply_overrides, load_config
from src.data.load import load_data
from src.data.zones import ZONES, mirror_zones
from src.engine.metrics import compute_all_metrics
from src.engine.probabilities import softmax_probabilities
from src.evaluation.calibration import apply_temperature, stored_temperature
from src.evaluation.ensemble import combine_probabilities, evaluate_ensemble
from src.evaluation.evaluate import predict_checkpoint
from src.evaluation.predict import predict_ensemble
from src.evaluation.predictions import predictions_arrays, read_predictions_table
from src.evaluation.tta import TTAModel, with_tta, zoom_images
from src.experiments.crossval import run_cross_validation
from src.optimization.runner import run_study
from src.utils.errors import CheckpointError, ConfigError
from tests.conftest import invoke_main, run_main, write_config, write_png_dataset

FOLDS = 3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """36 images of 18 patients; 2-epoch folds of a 32-px custom_cnn."""
    root = tmp_path_factory.mktemp("cv")
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, (36, 6))
    scores[rng.random((36, 6)) < 0.08] = 4
    write_png_dataset(root / "data", scores, patients=[f"P{i // 2}" for i in range(36)])
    write_config(root / "config" / "config.ini", root / "data",
                 Training={"n_epochs": 2, "precision": "fp32", "run_name": "cv3"},
                 CrossValidation={"folds": FOLDS},
                 Evaluation={"saliency_largest_error": 0, "saliency_random": 0, "bootstrap_samples": 100})
    return root


@pytest.fixture(scope="module")
def cv_run(project):
    """A cross-validation interrupted during fold 2 (in this process), then finished by `main.py --mode cv`.

    Returns what the interrupted run had left, the finishing process and the cross-validation directory.
    """
    cfg = load_config(project / "config" / "config.ini")
    out = project / "models" / "cv" / "cv3"

    def interrupt(fold: int, epoch: int, metrics: dict) -> None:
        if (fold, epoch) == (2, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cross_validation(cfg, on_epoch_end=interrupt)
    left = {"state": json.loads((out / "cv_state.json").read_text()),
            "fold_1_best": torch.load(out / "fold_1" / "best_model.pth", weights_only=True),
            "fold_2_epoch": torch.load(out / "fold_2" / "last_model.pth", weights_only=True)["epoch"],
            "fold_3": (out / "fold_3").exists()}
    finished = run_main("--mode", "cv", cwd=project)
    return left, finished, out


def test_folds_group_patients_stratify_and_keep_the_test_split_out(project, cv_run):
    _, finished, out = cv_run
    assert finished.returncode == 0, finished.stderr
    folds = pd.read_csv(out / "folds.csv", dtype={"FileID": str, "PatientID": str})
    assert folds.groupby("PatientID")["fold"].nunique().max() == 1, "a patient is in two folds"
    standard = load_data(load_config(project / "config" / "config.ini")).table
    test_ids = set(standard.loc[standard["split"] == "test", "FileID"])
    assert set(folds.loc[folds["fold"] == 0, "FileID"]) == test_ids and test_ids
    sizes = folds.loc[folds["fold"] > 0, "fold"].value_counts()
    assert sorted(sizes.index) == [1, 2, 3] and sizes.max() - sizes.min() <= 2
    for k in range(1, FOLDS + 1):
        split = pd.read_csv(out / f"fold_{k}" / "split.csv", dtype={"FileID": str}).set_index("FileID")["split"]
        expected = folds.set_index("FileID")["fold"].map(lambda f, k=k: "test" if f == 0 else "val" if f == k
                                                         else "train")
        assert split.loc[expected.index].tolist() == expected.tolist()


def test_out_of_fold_predictions_cover_every_non_test_image_once(cv_run):
    _, _, out = cv_run
    folds = pd.read_csv(out / "folds.csv", dtype={"FileID": str})
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"FileID": str})
    assert sorted(oof["FileID"]) == sorted(folds.loc[folds["fold"] > 0, "FileID"])
    assert not oof["FileID"].duplicated().any()
    fold_1 = pd.read_csv(out / "fold_1" / "evaluation" / "predictions_val.csv", dtype={"FileID": str})
    assert list(oof.columns) == list(fold_1.columns)  # the predictions format
    by_id = oof.set_index("FileID")
    assert np.allclose(by_id.loc[fold_1["FileID"], "right_sup_p0"], fold_1["right_sup_p0"])


def test_summary_mean_and_std_are_those_of_the_folds_and_oof_metrics_of_the_csv(cv_run):
    _, finished, out = cv_run
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == FOLDS and set(summary["per_fold"]) == {"fold_1", "fold_2", "fold_3"}
    for split in ("held_out", "test"):
        for name, mean in summary["mean"][split].items():
            values = [summary["per_fold"][f"fold_{k}"][split][name] for k in range(1, FOLDS + 1)]
            if not np.isnan(values).all():
                assert mean == pytest.approx(np.nanmean(values)), name
                assert summary["std"][split][name] == pytest.approx(np.nanstd(values, ddof=1), nan_ok=True), name
    fold_2 = json.loads((out / "fold_2" / "evaluation" / "metrics.json").read_text())["metrics"]["val"]
    assert summary["per_fold"]["fold_2"]["held_out"] == fold_2
    _, targets, _, probs = read_predictions_table(out / "oof_predictions.csv")
    assert summary["out_of_fold"]["f1_macro"] == pytest.approx(
        compute_all_metrics(targets, probs.argmax(-1), probs, ahf_low=1.3, ahf_high=2.2)["f1_macro"])
    mean_f1 = summary["mean"]["held_out"]["f1_macro"]
    assert f"{mean_f1:.4f} ± " in finished.stdout and "out-of-fold (pooled)" in finished.stdout


def test_an_interrupted_cv_continues_with_the_unfinished_folds(cv_run):
    left, finished, out = cv_run
    assert set(left["state"]["finished"]) == {"1"} and left["fold_2_epoch"] == 1 and not left["fold_3"]
    # Eval adds the fitted temperature to the checkpoint; the weights and the epoch stay those of before.
    best = torch.load(out / "fold_1" / "best_model.pth", weights_only=True)
    assert best["epoch"] == left["fold_1_best"]["epoch"] and "calibration" in best
    assert all(torch.equal(best["model"][k], v) for k, v in left["fold_1_best"]["model"].items()), \
        "fold 1 was trained again"
    assert "fold 1/3: finished earlier" in finished.stderr and "Resuming" in finished.stderr
    history = json.loads((out / "fold_2" / "logs" / "validation_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(json.loads((out / "cv_state.json").read_text())["finished"]) == {"1", "2", "3"}


def test_an_ensemble_of_two_checkpoints_is_the_mean_of_their_probabilities(project, cv_run, tmp_path):
    out = cv_run[2]
    cfg = load_config(project / "config" / "config.ini")
    members = [out / "fold_1" / "best_model.pth", out / "fold_2" / "best_model.pth"]
    results = evaluate_ensemble(cfg, members, tmp_path / "evaluation").metrics
    assert set(results) == {"test"}, "the folds' val splits differ: only the test split is shared"
    singles = [predict_checkpoint(cfg, m, ("test",)).splits["test"] for m in members]
    expected = (singles[0].probs + singles[1].probs) / 2
    table = pd.read_csv(tmp_path / "evaluation" / "predictions_test.csv", dtype={"FileID": str})
    probs = predictions_arrays(table.set_index("FileID").loc[singles[0].file_ids].reset_index())[3]
    assert np.allclose(probs, expected, atol=1e-5)
    assert set(results["test"]) == {"fold_1", "fold_2", "ensemble"}

    # calibrate = true: each member scaled by the temperature its fold's eval stored, then (auto) geometric.
    calibrated = apply_overrides(cfg, {"Evaluation.calibrate": True})
    evaluate_ensemble(calibrated, members, tmp_path / "calibrated")
    temperatures = [torch.load(m, weights_only=True)["calibration"]["temperature"] for m in members]
    scaled = [apply_temperature(single.probs, t) for single, t in zip(singles, temperatures)]
    table = pd.read_csv(tmp_path / "calibrated" / "predictions_test.csv", dtype={"FileID": str})
    probs = predictions_arrays(table.set_index("FileID").loc[singles[0].file_ids].reset_index())[3]
    assert np.allclose(probs, combine_probabilities(scaled, "geometric"), atol=1e-5)
    assert not np.allclose(probs, expected, atol=1e-3), "the temperatures must change the probabilities"
    assert json.loads((tmp_path / "calibrated" / "metrics.json").read_text())["average"] == "geometric"

    predicted = predict_ensemble(cfg, members, project / "data" / "images", tmp_path / "scored.csv")
    member_probs = [predictions_arrays(t.assign(**{f"{z}_true": 0 for z in ZONES}))[3]
                    for t in predicted.members.values()]
    ensemble_probs = predictions_arrays(predicted.table.assign(**{f"{z}_true": 0 for z in ZONES}))[3]
    assert len(predicted.table) == 36 and np.allclose(ensemble_probs, np.mean(member_probs, axis=0), atol=2e-5)


def test_eval_of_a_cv_directory_reports_every_fold_beside_the_ensemble(project, cv_run):
    out = cv_run[2]
    result = invoke_main("--mode", "eval", "--run", str(out), "--set", "Evaluation.tta=flip", cwd=project)
    assert result.exit_code == 0, result.output[-3000:]
    header = next(line for line in result.stdout.splitlines() if "ensemble" in line and "fold_1" in line)
    assert header.split() == ["fold_1", "fold_2", "fold_3", "ensemble"]
    report = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert [m["name"] for m in report["members"]] == ["fold_1", "fold_2", "fold_3"] and report["tta"] == "flip"
    assert set(report["metrics"]) == {"test"}
    low, high = report["metrics_ci95"]["test"]["ensemble"]["qwk"]
    assert low <= high and set(report["metrics_ci95"]["test"]) == {"fold_1", "fold_2", "fold_3", "ensemble"}
    assert f"{report['metrics']['test']['ensemble']['qwk']:.3f} [{low:.3f}, {high:.3f}]" in result.stdout

    # Export and the onnxruntime predict take one model: several are refused in one line, before any work.
    two = [arg for k in (1, 2) for arg in ("--checkpoint", str(out / f"fold_{k}" / "best_model.pth"))]
    for args in (["--mode", "export"], ["--mode", "predict", "--runtime", "onnx", "--input", "data/images"]):
        refused = run_main(*args, *two, cwd=project)
        assert refused.returncode == 2 and "takes one --checkpoint" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr


def test_a_stored_temperature_serves_only_the_tta_it_was_fitted_with():
    state = {"calibration": {"temperature": 0.6, "tta": "flip"}}
    assert stored_temperature(state, "m.pth", "flip") == 0.6
    with pytest.raises(CheckpointError, match="m.pth: its temperature was fitted with .*tta = flip, not none"):
        stored_temperature(state, "m.pth", "none")
    assert stored_temperature({"calibration": {"temperature": 0.6}}, "m.pth", "none") == 0.6  # fitted before TTA


def test_geometric_ensemble_is_the_normalised_geometric_mean():
    rng = np.random.default_rng(0)
    a, b = (rng.dirichlet(np.ones(5), (4, 6)) for _ in range(2))
    geometric = combine_probabilities([a, b], "geometric")
    expected = np.sqrt(a * b) / np.sqrt(a * b).sum(-1, keepdims=True)
    assert np.allclose(geometric, expected) and np.allclose(combine_probabilities([a, b]), (a + b) / 2)


class ZoneBrightness(nn.Module):
    """Left/right symmetric by construction: zone z's logits grow with the mean brightness of its own
    region (3 rows x 2 columns; the patient's right lung on the image's left), so a mirrored image
    gives the mirrored zone outputs."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        regions = images.reshape(b, 3, h // 3, 2, w // 2).mean(dim=(2, 4)).reshape(b, 6)
        return regions[:, :, None] * torch.arange(5.0)


def test_flip_tta_swaps_the_mirrored_zone_outputs_back():
    images = torch.rand(3, 1, 30, 30)
    images[:, :, :10, :15] += 2  # bright patient-right upper zone
    model, plain = ZoneBrightness(), softmax_probabilities(ZoneBrightness()(images))
    assert not torch.allclose(plain, mirror_zones(plain)), "the images must not be symmetric themselves"
    tta, probabilities = with_tta(model, softmax_probabilities, "flip", mean=0.0, std=1.0)
    assert isinstance(tta, TTAModel)
    probs = probabilities(tta(images))
    assert torch.allclose(probs, plain, atol=1e-6)
    unswapped = (plain + softmax_probabilities(model(images.flip(-1)))) / 2
    assert not torch.allclose(probs, unswapped, atol=1e-3)
    assert with_tta(model, softmax_probabilities, "none", 0.0, 1.0) == (model, softmax_probabilities)


def test_flip_and_scale_views_keep_the_centre_and_fill_with_black():
    image = torch.ones(1, 1, 20, 20)
    smaller = zoom_images(image, 0.5, background=-2.0)
    assert smaller[0, 0, 10, 10] == 1 and smaller[0, 0, 0, 0] == -2
    assert torch.equal(zoom_images(image, 1.0, 0.0), image)
    predictor, _ = with_tta(ZoneBrightness(), softmax_probabilities, "flip+scale", 0.5, 0.5)
    probs = predictor(torch.rand(2, 1, 30, 30))
    assert probs.shape == (2, 6, 5) and torch.allclose(probs.sum(-1), torch.ones(2, 6))


def test_continuing_with_other_folds_or_more_folds_than_patients_is_refused(project, cv_run):
    cfg = load_config(project / "config" / "config.ini")
    with pytest.raises(ConfigError, match="was started with other folds"):
        run_cross_validation(apply_overrides(cfg, {"CrossValidation.folds": 4}))
    assert not (cv_run[2] / "fold_4").exists()
    with pytest.raises(ConfigError, match="only 15 patients outside the test split"):
        run_cross_validation(apply_overrides(cfg, {"CrossValidation.folds": 40, "Training.run_name": "many"}))


def test_hyperopt_cv_objective_reports_the_running_mean_after_each_fold_and_prunes_between_folds(project, tmp_path):
    cfg = apply_overrides(load_config(project / "config" / "config.ini"), {
        "Hyperopt.cv_folds": 3, "Hyperopt.max_epochs": 1, "Hyperopt.n_trials": 1, "Hyperopt.study_name": "cvstudy",
        "Hyperopt.output_dir": str(tmp_path / "hyperopt"), "Logging.log_dir": str(tmp_path / "logs"),
        "Hyperopt.Model.dropout": "uniform(0.1, 0.5)", "Hyperopt.Model.model_arch": "choice(custom_cnn)",
        "Hyperopt.Training.batch_size": "choice(8)"})
    study = run_study(cfg, pruner=optuna.pruners.NopPruner()).study
    trial = study.trials[0]
    folds = trial.user_attrs["fold_values"]
    assert trial.state == TrialState.COMPLETE and len(folds) == 3
    assert trial.intermediate_values == pytest.approx({k: np.mean(folds[:k]) for k in (1, 2, 3)})
    assert trial.value == pytest.approx(np.mean(folds))
    run_dir = Path(trial.user_attrs["run_dir"])
    held_out = []
    for k, value in enumerate(folds, 1):
        history = json.loads((run_dir / f"fold_{k}" / "logs" / "validation_history.json").read_text())
        assert value == max(h["val_f1_macro"] for h in history)
        split = pd.read_csv(run_dir / f"fold_{k}" / "split.csv", dtype={"FileID": str})
        held_out += split.loc[split["split"] == "val", "FileID"].tolist()
    assert len(held_out) == len(set(held_out)) == (split["split"] != "test").sum()
    assert study.user_attrs["metric"] == "val_f1_macro (mean of 3 folds)"

    # A pruner that rejects every value stops the next trial after its first fold.
    pruned = run_study(cfg, pruner=optuna.pruners.ThresholdPruner(lower=2.0)).study.trials[1]
    assert pruned.state == TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    assert sorted(p.name for p in Path(pruned.user_attrs["run_dir"]).glob("fold_*")) == ["fold_1"]
