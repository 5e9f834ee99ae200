"""--mode export and predict --runtime onnx: exported files match PyTorch, carry their preprocessing,
and score images without PyTorch installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from torch import nn

from src.config.loader import apply_overrides, load_config
from src.config.render import render_ini
from src.data.zones import CLASS_NAMES, ZONES
from src.deploy.export import ScoringModel, export_model, write_exported
from src.deploy.metadata import METADATA_KEY, describe_model
from src.deploy.onnx_predict import predict_with_onnx
from src.engine.probabilities import probabilities_for
from src.evaluation.predict import predict_images
from src.models.backbones import BACKBONES
from src.models.factory import build_model
from src.utils.checkpoint import save_checkpoint
from src.utils.errors import ExportError
from tests.conftest import REPO, invoke_main, run_main, write_config

# `python -c` as on a machine without PyTorch: importing torch fails as it does where it is not
# installed, which proves the ONNX path never needs it.
WITHOUT_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request) -> Path:
    """A project directory with one trained custom_cnn run (1 epoch on 24 tiny images)."""
    root = tmp_path_factory.mktemp("export")
    data = request.getfixturevalue("module_dataset")
    write_config(root / "config" / "config.ini", data, Training={"n_epochs": 1, "precision": "fp32"},
                 Data={"image_size": 32, "clip_low_percentile": 1.0})
    result = run_main("--mode", "train", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def module_dataset(tmp_path_factory) -> Path:
    from tests.conftest import write_png_dataset

    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("data")
    write_png_dataset(root, rng.integers(0, 5, (24, 6)))
    return root


def best_checkpoint(root: Path) -> Path:
    (run,) = (root / "models").glob("*_custom_cnn_run")
    return run / "best_model.pth"


def test_onnx_export_carries_preprocessing_and_predicts_without_torch_like_pytorch(trained, module_dataset):
    model_file = trained / "deploy" / "model.onnx"
    # In this process: the module's training run was the real `main.py` process.
    result = invoke_main("--mode", "export", "--checkpoint", str(best_checkpoint(trained)), "--format", "onnx",
                         "--output", str(model_file), cwd=trained)
    assert result.exit_code == 0, result.output[-3000:]
    assert "checked against PyTorch" in result.stdout

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    metadata = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert metadata["preprocessing"] == {"image_size": 32, "resize_mode": "plain", "clip_low_percentile": 1.0,
                                         "clip_high_percentile": 99.5, "cache_dtype": "uint16",
                                         "normalization_mean": 0.449, "normalization_std": 0.226}
    assert (metadata["zones"], metadata["classes"], metadata["arch"]) == (list(ZONES), list(CLASS_NAMES), "custom_cnn")
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch size

    images = module_dataset / "images"
    torch_run = invoke_main("--mode", "predict", "--input", str(images), "--output", "torch.csv", cwd=trained)
    assert torch_run.exit_code == 0, torch_run.output[-3000:]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    onnx_run = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(REPO / "main.py"), "--mode", "predict",
                               "--runtime", "onnx", "--checkpoint", str(model_file), "--input", str(images),
                               "--output", "onnx.csv"], cwd=trained, env=env, capture_output=True, text=True)
    assert onnx_run.returncode == 0, onnx_run.stderr[-3000:]

    by_torch, by_onnx = pd.read_csv(trained / "torch.csv"), pd.read_csv(trained / "onnx.csv")
    assert list(by_onnx.columns) == list(by_torch.columns) and len(by_onnx) == 24
    assert by_onnx["FileID"].tolist() == by_torch["FileID"].tolist()
    numeric = by_torch.select_dtypes("number").columns.drop("FileID")
    np.testing.assert_allclose(by_onnx[numeric].to_numpy(), by_torch[numeric].to_numpy(), atol=1e-4)
    assert by_onnx[[f"{z}_pred" for z in ZONES]].equals(by_torch[[f"{z}_pred" for z in ZONES]])


def tiny_checkpoint(tmp_path: Path, arch: str, loss: str = "weighted_ce",
                    calibration: dict | None = None) -> tuple[Path, nn.Module]:
    """A randomly initialised `arch` model at 32 px saved as a checkpoint (with eval's `calibration`)."""
    cfg = apply_overrides(load_config(None), {"Model.model_arch": arch, "Model.pretrained": False,
                                              "Data.image_size": 32, "Loss.loss": loss})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = tmp_path / f"{arch}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "arch": arch, "config": render_ini(cfg, documented=False)}
                    | ({"calibration": calibration} if calibration else {}))
    return path, ScoringModel(model, probabilities_for(loss)).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
# densenet121 and vit_b_16 take most of a minute on 2 cores: they run with -m long; the default suite
# exports a convolutional torchvision backbone and ours.
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.long) if a in ("densenet121", "vit_b_16") else a
                                  for a in BACKBONES])
def test_every_architecture_exports_to_both_formats_with_parity(tmp_path, arch):
    checkpoint, scoring = tiny_checkpoint(tmp_path, arch, loss="ordinal" if arch == "custom_cnn" else "weighted_ce")
    images = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))  # a batch size export never saw
    with torch.no_grad():
        expected = scoring(images).numpy()
    assert np.allclose(expected.sum(-1), 1, atol=1e-5)  # probabilities, as eval computes them

    onnx_file = export_model(load_config(None), checkpoint, "onnx")
    assert onnx_file == checkpoint.with_suffix(".onnx")  # beside the checkpoint by default
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": images.numpy()})[0], expected, atol=1e-4)

    script_file = export_model(load_config(None), checkpoint, "torchscript", tmp_path / "scripted.pt")
    extra = {f"{METADATA_KEY}.json": ""}
    loaded = torch.jit.load(str(script_file), _extra_files=extra)
    assert json.loads(extra[f"{METADATA_KEY}.json"])["arch"] == arch
    with torch.no_grad():
        np.testing.assert_allclose(loaded(images).numpy(), expected, atol=1e-4)


class BatchDependent(nn.Module):
    """Halves its output for single images: tracing at another batch size bakes the other branch in."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(image.mean(dim=(2, 3))[:, :, None].expand(-1, 6, 5), dim=-1)
        return probs * 0.5 if image.shape[0] == 1 else probs


def test_calibrated_onnx_predict_scales_probabilities_like_the_pytorch_predict(trained, module_dataset, tmp_path):
    images, config = module_dataset / "images", trained / "config" / "config.ini"
    calibrated, plain = (load_config(config, [f"Evaluation.calibrate={flag}"]) for flag in ("true", "false"))
    checkpoint, _ = tiny_checkpoint(tmp_path, "custom_cnn", calibration={"temperature": 0.6})
    model_file = export_model(plain, checkpoint, "onnx")
    by_torch = predict_images(calibrated, checkpoint, images, tmp_path / "torch.csv")
    by_onnx = predict_with_onnx(calibrated, model_file, images, tmp_path / "onnx.csv")
    probs = [c for c in by_torch if c.endswith(("_p0", "_p1", "_p2", "_p3", "_p4"))]
    np.testing.assert_allclose(by_onnx[probs].to_numpy(float), by_torch[probs].to_numpy(float), atol=1e-4)
    uncalibrated = predict_with_onnx(plain, model_file, images, tmp_path / "plain.csv")
    assert not np.allclose(uncalibrated[probs].to_numpy(float), by_onnx[probs].to_numpy(float), atol=1e-3)

    never_evaluated = export_model(plain, tiny_checkpoint(tmp_path / "c", "custom_cnn")[0], "onnx")
    with pytest.raises(ExportError, match="exported without a fitted temperature"):
        predict_with_onnx(calibrated, never_evaluated, images, tmp_path / "never.csv")
    assert not (tmp_path / "never.csv").exists()


def test_an_export_that_differs_from_pytorch_is_an_error_and_writes_nothing(tmp_path):
    cfg = load_config(None)
    output = tmp_path / "model.pt"
    with pytest.raises(ExportError, match=r"differs from PyTorch by 1\.00e-01 .*nothing written"):
        write_exported(BatchDependent(), "torchscript", 32, describe_model(cfg, None), output, "test model")
    assert list(tmp_path.iterdir()) == []


def test_export_and_onnx_predict_errors_name_the_file(trained, tmp_path):
    missing = run_main("--mode", "export", "--checkpoint", str(tmp_path / "nope.pth"), cwd=trained)
    assert missing.returncode == 2 and "nope.pth: checkpoint not found" in missing.stderr

    not_onnx = run_main("--mode", "predict", "--runtime", "onnx", "--checkpoint", str(best_checkpoint(trained)),
                        "--input", str(tmp_path), cwd=trained)
    assert not_onnx.returncode == 2 and "best_model.pth: not a readable ONNX model" in not_onnx.stderr

    bare = tmp_path / "bare.onnx"  # a valid ONNX model that was not made by --mode export
    torch.onnx.export(nn.Identity().eval(), (torch.zeros(1, 1, 4, 4),), str(bare), dynamo=True)
    no_metadata = run_main("--mode", "predict", "--runtime", "onnx", "--checkpoint", str(bare), "--input",
                           str(tmp_path), cwd=trained)
    assert no_metadata.returncode == 2
    assert f"bare.onnx: no '{METADATA_KEY}' metadata; export the model with --mode export" in no_metadata.stderr
    for result in (missing, not_onnx, no_metadata):
        assert "Traceback" not in result.stderr

