"""The backbone zoo on weights in each library's own on-disk format (tiny random models, offline):
RAD-DINO through transformers, chexnet through torchxrayvision, timm:, torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from src.config.loader import apply_overrides, load_config
from src.config.schema import Config, DataConfig, ModelConfig
from src.deploy.export import ScoringModel, write_exported
from src.deploy.metadata import METADATA_KEY
from src.engine.probabilities import probabilities_for
from src.evaluation.saliency import cam_layer, zone_cams
from src.models.factory import build_model
from src.models.zoo import get_backbone, resolve_preprocessing
from src.models.zoo.catalog import describe
from tests.conftest import invoke_main, run_main, write_config
from tests.zoo_caches import (
    write_hf_vit_cache,
    write_raddino_cache,
    write_timm_cache,
    write_torchvision_cache,
    write_xrv_cache,
)


@pytest.fixture
def caches(tmp_path, monkeypatch) -> dict[str, Path]:
    """Empty HF_HOME, HOME (torchxrayvision's ~/.torchxrayvision) and TORCH_HOME, offline."""
    dirs = {name: tmp_path / name for name in ("HF_HOME", "HOME", "TORCH_HOME", "work")}
    for name, path in dirs.items():
        path.mkdir()
        if name != "work":
            monkeypatch.setenv(name, str(path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return dirs


def _grid(tokens: torch.Tensor, size: int, patch: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], size // patch, size // patch)


@pytest.mark.parametrize("size", [56, 70])  # native, and a multiple of 14 that interpolates the positions
def test_raddino_from_the_hub_cache_equals_transformers_patch_tokens(caches, size):
    model, snapshot = write_raddino_cache(caches["HF_HOME"], caches["work"])
    x = torch.rand(2, 1, size, size) * 4 - 2
    with torch.no_grad():
        expected = _grid(model(pixel_values=x.repeat(1, 3, 1, 1)).last_hidden_state[:, 1:], size, 14)
        for path in ("", str(snapshot)):  # the hub cache, and a snapshot directory copied in
            backbone, channels = get_backbone("raddino", pretrained=True, pretrained_path=path, image_size=size)
            torch.testing.assert_close(backbone.eval()(x), expected, rtol=0, atol=1e-5)
    assert channels == 32


def test_hf_vit_from_the_hub_cache_equals_its_patch_tokens_at_another_size(caches):
    model = write_hf_vit_cache(caches["HF_HOME"], caches["work"], "tiny-org/tiny-vit")
    x = torch.rand(2, 1, 48, 48)
    backbone, channels = get_backbone("hf:tiny-org/tiny-vit", pretrained=True, image_size=48)
    with torch.no_grad():
        tokens = model(pixel_values=x.repeat(1, 3, 1, 1), interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(backbone.eval()(x), _grid(tokens[:, 1:], 48, 8), rtol=0, atol=1e-5)
    assert channels == 32


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("arch, size", [("raddino", 56), ("hf:tiny-org/tiny-vit", 32),
                                        ("timm:test_resnet.r160_in1k", 32)])
def test_transformer_and_timm_backbones_export_to_both_formats_with_parity(caches, arch, size):
    if arch == "raddino":
        write_raddino_cache(caches["HF_HOME"], caches["work"])
    elif arch.startswith("hf:"):
        write_hf_vit_cache(caches["HF_HOME"], caches["work"], arch.removeprefix("hf:"))
    else:
        write_timm_cache(caches["HF_HOME"], caches["work"], arch.removeprefix("timm:"))
    cfg = Config(model=ModelConfig(model_arch=arch, pretrained=True), data=DataConfig(image_size=size))
    scoring = ScoringModel(build_model(cfg).eval(), probabilities_for("weighted_ce")).eval()
    for fmt in ("onnx", "torchscript"):
        output = caches["work"] / f"model.{fmt}"
        assert write_exported(scoring, fmt, size, {"arch": arch}, output, arch) <= 1e-4
        assert output.is_file()


def test_raddino_grad_cam_weighs_its_last_encoder_block_on_the_patch_grid(caches):
    write_raddino_cache(caches["HF_HOME"], caches["work"])
    model = build_model(Config(model=ModelConfig(model_arch="raddino", pretrained=True),
                               data=DataConfig(image_size=56)))
    layer, _ = cam_layer(model, (56, 56))
    assert layer is model.backbone.model.encoder.layer[-1]
    maps = zone_cams(model, torch.randn(2, 1, 56, 56), np.array([[0, 1, 2, 3, 4, 0], [3, 3, 2, 1, 0, 0]]))
    assert maps.shape == (2, 6, 56, 56) and np.isfinite(maps).all() and maps.std(axis=(2, 3)).max() > 0.05


def test_raddino_refuses_sizes_its_patches_do_not_tile(caches):
    write_raddino_cache(caches["HF_HOME"], caches["work"])
    with pytest.raises(Exception, match="image_size = 64 is not allowed for raddino: expected a multiple of 14"):
        get_backbone("raddino", pretrained=True, image_size=64)


def test_chexnet_from_the_torchxrayvision_cache_equals_its_features(caches):
    model = write_xrv_cache(caches["HOME"], "densenet121-res224-chex")
    x = torch.rand(2, 1, 64, 64) * 2048 - 1024
    backbone, channels = get_backbone("chexnet", pretrained=True, image_size=64, weights="densenet121-res224-chex")
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), F.relu(model.features(x)))
    assert channels == 1024
    with pytest.raises(Exception, match=r"densenet121-res224-all.*is missing and HF_HUB_OFFLINE=1"):
        get_backbone("chexnet", pretrained=True, image_size=64)  # the default weights are not cached
    with pytest.raises(Exception, match=r"pretrained_weights = 'densenet121-res999' is not allowed.*-mimic_ch"):
        get_backbone("chexnet", pretrained=True, image_size=64, weights="densenet121-res999")


@pytest.mark.parametrize("name", ["test_resnet.r160_in1k", "test_vit.r160_in1k"])
def test_timm_from_the_hub_cache_equals_timm_on_the_repeated_grey_image(caches, name):
    import timm

    write_timm_cache(caches["HF_HOME"], caches["work"], name)
    backbone, channels = get_backbone(f"timm:{name}", pretrained=True, image_size=64)
    (file,) = (caches["HF_HOME"] / "hub").glob("models--timm--*/snapshots/*/model.safetensors")
    vit = "vit" in name
    rgb = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(file)},
                            **({"img_size": 64} if vit else {})).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = rgb.forward_features(x.repeat(1, 3, 1, 1))
        if vit:
            expected = _grid(expected[:, rgb.num_prefix_tokens:], 64, 16)
        torch.testing.assert_close(backbone.eval()(x), expected, rtol=1e-4, atol=1e-5)
    assert channels == rgb.num_features


def test_torchvision_weights_from_the_torch_home_cache(caches):
    model = write_torchvision_cache(caches["TORCH_HOME"], "DenseNet121_Weights.IMAGENET1K_V1")
    backbone, _ = get_backbone("densenet121", pretrained=True, image_size=64)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), F.relu(model.features(x.repeat(1, 3, 1, 1))),
                                   rtol=1e-4, atol=1e-5)


def test_preprocessing_follows_the_weights_unless_the_config_overrides_it(caches):
    write_raddino_cache(caches["HF_HOME"], caches["work"])
    write_xrv_cache(caches["HOME"], "densenet121-res224-all")

    def resolved(arch: str, pretrained: bool = True, **data) -> DataConfig:
        return resolve_preprocessing(Config(model=ModelConfig(model_arch=arch, pretrained=pretrained),
                                            data=DataConfig(image_size=56, **data))).data

    raddino = resolved("raddino")  # its preprocessor_config.json
    assert (raddino.normalization, raddino.normalization_mean, raddino.normalization_std) == ("custom", 0.5307, 0.2583)
    chexnet = resolved("chexnet")  # torchxrayvision's [-1024, 1024]
    assert (chexnet.normalization_mean, chexnet.normalization_std) == (0.5, 1 / 2048)
    scratch = resolved("custom_cnn", pretrained=False)
    assert (scratch.normalization_mean, scratch.normalization_std) == (0.449, 0.226)
    assert resolved("raddino", normalization="medical").normalization == "medical"


def _train_and_export(root: Path, data: Path, arch: str, size: int, env: dict, **model) -> dict:
    write_config(root / "config" / "config.ini", data, Training={"n_epochs": 1, "precision": "fp32"},
                 Data={"image_size": size}, Model={"model_arch": arch, "pretrained": "true", **model})
    trained = run_main("--mode", "train", cwd=root, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (checkpoint,) = (root / "models").glob("*/best_model.pth")
    output = root / "model.onnx"
    with pytest.MonkeyPatch.context() as patch:  # in this process, with the training process's environment
        for name, value in env.items():
            patch.setenv(name, value)
        exported = invoke_main("--mode", "export", "--checkpoint", str(checkpoint), "--format", "onnx",
                               "--output", str(output), cwd=root)
    assert exported.exit_code == 0, exported.output[-3000:]
    assert "checked against PyTorch" in exported.stdout
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])["preprocessing"]


@pytest.mark.parametrize("arch, size, stats", [
    ("raddino", 56, (0.5307, 0.2583)),
    ("timm:test_vit.r160_in1k", 32, (0.5, 0.5)),
    pytest.param("chexnet", 32, (0.5, 1 / 2048), marks=pytest.mark.long),
])
def test_each_source_trains_an_epoch_offline_and_exports_its_preprocessing(caches, tiny_dataset, arch, size, stats):
    if arch == "raddino":
        write_raddino_cache(caches["HF_HOME"], caches["work"])
    elif arch == "chexnet":
        write_xrv_cache(caches["HOME"], "densenet121-res224-all")
    else:
        write_timm_cache(caches["HF_HOME"], caches["work"], arch.removeprefix("timm:"))
    env = {name: str(path) for name, path in caches.items() if name != "work"} | {"HF_HUB_OFFLINE": "1"}
    preprocessing = _train_and_export(caches["work"], tiny_dataset, arch, size, env)
    assert (preprocessing["normalization_mean"], preprocessing["normalization_std"]) == pytest.approx(stats)


@pytest.mark.parametrize("arch, names", [("raddino", ["microsoft/rad-dino/model.safetensors", "hub"]),
                                         ("chexnet", ["densenet121-res224-all", "models_data"])])
def test_missing_weights_offline_is_one_line_and_exit_2_before_any_data_work(caches, tiny_dataset, arch, names):
    write_config(caches["work"] / "config" / "config.ini", tiny_dataset, Model={"model_arch": arch,
                                                                                "pretrained": "true"})
    env = {name: str(path) for name, path in caches.items() if name != "work"} | {"HF_HUB_OFFLINE": "1"}
    for mode in ("check", "train"):
        result = run_main("--mode", mode, cwd=caches["work"], env=env)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert all(name in line for name in names)
        assert "pretrained = false" in line and "pretrained_path" in line
        assert not (tiny_dataset / "cache").exists()  # refused before the images were read


def test_raddino_uncached_is_described_as_rad_dino_vit_b_14(caches):
    info = describe("raddino")
    assert (round(info.params / 1e6, 1), info.channels, info.native_size, info.sizes) == \
        (86.3, 768, 518, "multiples of 14")


def test_models_mode_lists_every_backbone_and_what_is_cached(caches, tiny_dataset):
    write_raddino_cache(caches["HF_HOME"], caches["work"])
    write_config(caches["work"] / "config" / "config.ini", tiny_dataset,
                 Model={"model_arch": "timm:test_vit.r160_in1k"})
    env = {name: str(path) for name, path in caches.items() if name != "work"} | {"HF_HUB_OFFLINE": "1"}
    result = run_main("--mode", "models", cwd=caches["work"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in ("resnet50", "densenet121", "chexnet", "custom_cnn", "vit_b_16", "raddino",
                 "timm:test_vit.r160_in1k"):
        assert name in rows
    assert rows["raddino"].split()[2:4] == ["32", "56"]  # the cached snapshot's config and preprocessor
    assert "hub microsoft/rad-dino (cached)" in rows["raddino"]
    assert "(0 of 7 cached)" in rows["chexnet"] and "not cached" in rows["resnet50"]
    assert rows["timm:test_vit.r160_in1k"].split()[3] == "160"


def test_models_measure_times_training_steps_per_precision_this_cpu_runs():
    from src.cli.models import measure
    from src.engine.precision import candidates

    cfg = apply_overrides(load_config(None, env={}), {"Model.pretrained": False, "Training.device": "cpu"})
    rates = measure(cfg, "custom_cnn", 32)
    expected = [o for o in candidates(torch.device("cpu"), "auto") if o.name == "fp32" or o.channels_last]
    assert list(rates) == [str(o) for o in expected] and "fp32" in rates  # bf16 too where the CPU has it
    assert all(rate > 0 for rate in rates.values())
