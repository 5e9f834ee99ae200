"""Every check of the inputs comes before any costly work, in every mode that trains: a bad labels
file gives its one line (exit 2) before the precision probe, a weights download or a model build.

The probe's cache ($XDG_CACHE_HOME/csi-predictor/precision.json) is the witness: it is warmed here
with another model's pick, and a probe that ran would add the configured model to it. It exists on
every CPU: where fp32 is the only candidate (no native bf16) the unmeasured pick is recorded too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from src.config.loader import load_config
from src.engine.precision import cache_file, choose_precision
from src.utils.device import resolve_device
from tests.conftest import run_main, write_config, write_png_dataset


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose labels file names an image outside image_dir, with precision = auto on a
    model (resnet50 at 64 px) that the probe cache does not hold yet."""
    labels = write_png_dataset(tmp_path / "data", np.random.default_rng(0).integers(0, 4, (8, 6)))
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([rows[0] + ";path", *rows[1:], "x;0;0;0;0;0;0;../../secret.png"]) + "\n")
    write_config(tmp_path / "config" / "config.ini", tmp_path / "data",
                 Data={"image_size": 64}, Model={"model_arch": "resnet50"},
                 Training={"precision": "auto", "n_epochs": 1}, CrossValidation={"folds": 2},
                 Hyperopt={"study_name": "order"})
    best = {"study_name": "order", "best_trial": 3, "metric": "val_f1_macro", "best_value": 0.5,
            "best_params": {"Training.learning_rate": 0.01}}
    (tmp_path / "best_params.json").write_text(json.dumps(best))
    return tmp_path


def _warm_probe_cache() -> bytes:
    """The probe cache holding one pick (custom_cnn at 32 px), as a machine that trained before has."""
    cfg = load_config(None, ["Model.model_arch=custom_cnn", "Model.pretrained=false", "Data.image_size=32"], env={})
    choose_precision(cfg, resolve_device("cpu"))
    return cache_file().read_bytes()


MODES = {
    "train": ["--mode", "train"],
    "both": ["--mode", "both"],
    "cv": ["--mode", "cv"],
    "hyperopt": ["--mode", "hyperopt", "--n-trials", "1"],
    "train-optimized": ["--mode", "train-optimized", "--hyperparams", "best_params.json"],
}


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_labels_file_fails_before_the_probe_and_the_model(project, mode):
    assert Path(os.environ["XDG_CACHE_HOME"]) in cache_file().parents  # the test's own, empty cache home
    warm = _warm_probe_cache()
    result = run_main(*MODES[mode], cwd=project)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "line 10 (FileID x): path '../../secret.png' leads outside" in lines[0], result.stderr
    assert cache_file().read_bytes() == warm  # no probe ran
    assert not (project / "models").exists() and not list((project / "data").glob("cache*"))


def test_a_sweep_run_with_a_bad_labels_file_stops_the_agent_before_any_probe(project):
    (project / "sweep.yaml").write_text("method: grid\nparameters:\n  dropout: {values: [0.1, 0.2]}\n")
    created = run_main("--mode", "sweep", "--backend", "local", "--sweep-config", "sweep.yaml", "--sweep-name", "s",
                       cwd=project)
    assert created.returncode == 0, created.stderr
    warm = _warm_probe_cache()
    result = run_main("--mode", "sweep-agent", "--backend", "local", "--sweep-id", "s", "--count", "1", cwd=project)
    assert result.returncode == 2, result.stderr
    assert "line 10 (FileID x): path '../../secret.png' leads outside" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr and cache_file().read_bytes() == warm
