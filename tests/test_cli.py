"""The command line as a user runs it: check, train, eval, predict, errors, legacy entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from src.data.zones import ZONES
from tests.conftest import REPO, invoke_main, run_main, write_config, write_png_dataset


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working directory with config/config.ini and 60 strongly learnable 32-px images."""
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, (60, 6))
    scores[rng.random((60, 6)) < 0.08] = 4
    write_png_dataset(root / "data", scores, patients=[f"P{i // 2}" for i in range(60)])
    write_config(root / "config" / "config.ini", root / "data",
                 Training={"n_epochs": 3, "learning_rate": 0.003, "batch_size": 8},
                 Data={"normalization": "simple"}, Model={"dropout": 0.0})
    return root


def test_help_lists_every_mode(tmp_path):
    result = run_main("--help", cwd=tmp_path)
    assert result.returncode == 0
    for mode in ("train", "eval", "both", "predict", "check", "hyperopt", "train-optimized"):
        assert f"  {mode} " in result.stdout


def test_check_prints_summary(project):
    result = run_main("--mode", "check", cwd=project, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    # With no pretrained weights to look for, check never imports torch (a second of its start-up).
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pandas" in imported and "torch" not in imported
    assert "60 rows, 60 usable, 0 skipped" in result.stdout
    assert "right_sup" in result.stdout and "unknown_%" in result.stdout and "Split" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--set", "Training.batch_size=-1"], "--set Training.batch_size = '-1' is not allowed: expected an integer >= 1"),
    (["--set", "Model.model_arch=resnet5"], "did you mean 'resnet50'"),
    (["--config", "missing.ini"], "missing.ini: config file not found"),
    (["--epochs", "zero"], "--epochs = 'zero' is not allowed"),
    (["--set", "Callbacks.monitor=val_nope"], "--set Callbacks.monitor = 'val_nope' is not allowed: expected a "
                                               "metric of validation_history.json"),
    (["--set", "Callbacks.monitor=val_f1macro"], "did you mean 'val_f1_macro'"),
    (["--set", "Hyperopt.metric=val_qwk_right"], "did you mean 'val_qwk_right_sup'"),
])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, project, args, fragment):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.ini").write_text((project / "config" / "config.ini").read_text()
                                                   .replace(str(project / "models"), str(tmp_path / "models"))
                                                   .replace(str(project / "logs"), str(tmp_path / "logs")))
    result = run_main("--mode", "train", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]


def test_bad_csv_row_exits_2_naming_the_row(tmp_path, project):
    data = tmp_path / "data"
    write_png_dataset(data, np.zeros((3, 6), dtype=int))
    labels = data / "labels.csv"
    labels.write_text(labels.read_text().replace("1001;0;0", "1001;0;7"))
    write_config(tmp_path / "config" / "config.ini", data)
    result = run_main("--mode", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert "line 3 (FileID 1001), column left_sup: '7' is not a zone score" in result.stderr
    debug = run_main("--mode", "check", "--log-level", "debug", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_train_eval_predict_end_to_end(project):
    train = run_main("--mode", "train", cwd=project)
    assert train.returncode == 0, train.stderr
    run_dir = next((project / "models").iterdir())
    assert run_dir.name.endswith("_custom_cnn_run") and f"Run directory  {run_dir}" in train.stdout
    for name in ("best_model.pth", "last_model.pth", "config.ini", "split.csv", "logs/training_history.json",
                 "logs/validation_history.json", "logs/metrics.csv"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "logs" / "validation_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and "val_qwk" in history[0]
    assert all("lr" in h for h in json.loads((run_dir / "logs" / "training_history.json").read_text()))
    checkpoint = torch.load(run_dir / "best_model.pth", weights_only=True)
    assert checkpoint["arch"] == "custom_cnn" and "[Model]" in checkpoint["config"]

    # The steps after the real `main.py` process run in this one: the same CLI, without the start-up.
    evaluation = invoke_main("--mode", "eval", cwd=project)
    assert evaluation.exit_code == 0, evaluation.output[-3000:]
    out = run_dir / "evaluation"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"val", "test"} and "f1_macro" in evaluation.stdout
    for split in ("val", "test"):
        for name in (f"predictions_{split}.csv", f"confusion_zones_{split}.png",
                     f"confusion_overall_{split}.png", f"confusion_ahf_{split}.png"):
            assert (out / name).stat().st_size > 0, name
        table = pd.read_csv(out / f"predictions_{split}.csv", dtype={"FileID": str})
        expected = ["FileID"] + [c for z in ZONES for c in (f"{z}_true", f"{z}_pred", *(f"{z}_p{k}" for k in range(5)))]
        assert list(table.columns) == expected + ["csi_true", "csi_pred", "ahf_true", "ahf_pred"]
        assert np.allclose(table[[f"right_sup_p{k}" for k in range(5)]].sum(axis=1), 1, atol=1e-3)
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"

    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    train_ids = split.loc[split["split"] == "train", ["FileID"]]
    train_ids.to_csv(project / "to_score.csv", index=False)
    predict = invoke_main("--mode", "predict", "--checkpoint", str(run_dir / "best_model.pth"),
                          "--input", "to_score.csv", "--output", "scored.csv", cwd=project)
    assert predict.exit_code == 0, predict.output[-3000:]
    scored = pd.read_csv(project / "scored.csv", dtype={"FileID": str})
    zone_columns = [c for z in ZONES for c in (f"{z}_pred", *(f"{z}_p{k}" for k in range(5)))]
    assert list(scored.columns) == ["FileID", *zone_columns, "csi_pred", "ahf_pred"]
    labels = pd.read_csv(project / "data" / "labels.csv", sep=";", dtype={"FileID": str}).set_index("FileID")
    truth = labels.loc[scored["FileID"], list(ZONES)].fillna(4).to_numpy(int)
    predicted = scored[[f"{z}_pred" for z in ZONES]].to_numpy()
    known = truth != 4
    accuracy = (predicted[known] == truth[known]).mean()
    assert accuracy > 0.4, f"training-image accuracy {accuracy:.2f} is not above chance (0.25)"

    by_dir = invoke_main("--mode", "predict", "--input", "data/images", "--output", "all.csv", cwd=project)
    assert by_dir.exit_code == 0, by_dir.output[-3000:]
    assert len(pd.read_csv(project / "all.csv")) == 60


def test_eval_refuses_a_checkpoint_of_another_architecture(project, tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"model": {}, "arch": "resnet50", "config": "[Model]\nmodel_arch = resnet50\n"}, bogus)
    result = invoke_main("--mode", "predict", "--checkpoint", str(bogus), "--input", "data/images", cwd=project)
    assert result.exit_code == 2 and "weights do not fit" in result.stderr
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"nope")
    result = invoke_main("--mode", "eval", "--checkpoint", str(garbage), cwd=project)
    assert result.exit_code == 2 and "not a readable CSI-Predictor checkpoint" in result.stderr


def test_legacy_imports_and_entry_points(project):
    code = (
        "from src.train import train_model, WeightedCSILoss\n"
        "from src.evaluate import evaluate_model\n"
        "from src.config import cfg\n"
        "from src.training.trainer import train_model as t2, train_epoch, validate_epoch\n"
        "from src.training.loss import WeightedCSILoss as L2\n"
        "from src.training.metrics import compute_f1_metrics, compute_precision_recall, "
        "compute_csi_average_metrics, compute_ahf_classification_metrics\n"
        "from src.training.optimizer import create_optimizer, create_scheduler\n"
        "from src.training.callbacks import EarlyStopping, MetricsTracker, AverageMeter\n"
        "from src.models.factory import build_model\n"
        "from src.models.backbones import get_backbone\n"
        "from src.utils.checkpoint import load_checkpoint\n"
        "from src.utils.logging import logger\n"
        "assert train_model is t2 and WeightedCSILoss is L2\n"
        "print(cfg.data.image_size)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "32"  # read from the working directory's config/config.ini
    for module in ("src.train", "src.cli.train", "src.cli.main", "src.evaluate"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=project, capture_output=True,
                                text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
        assert result.returncode == 0 and "--mode" in result.stdout, module
