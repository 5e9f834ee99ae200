"""Backbones, zone head and model factory."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision

from src.config.schema import Config, DataConfig, ModelConfig, section_fields
from src.data.zones import ZONES
from src.models.backbones import BACKBONES, get_backbone
from src.models.factory import CSIModel, build_model
from src.models.heads import ZoneHead
from src.models.zoo import PREFIXES, SEED
from src.utils.errors import ConfigError

CNNS = ("resnet50", "densenet121", "custom_cnn")


def make_config(arch: str, image_size: int, **model: object) -> Config:
    return Config(
        model=ModelConfig(**{"model_arch": arch, "pretrained": False, **model}),
        data=DataConfig(image_size=image_size),
    )


def test_registry_keys_are_the_schema_choices():
    meta = section_fields("Model")["model_arch"].metadata
    assert set(SEED) == set(meta["choices"]) and set(PREFIXES) == set(meta["prefixes"])


@pytest.mark.parametrize("pooling", ["global", "regional"])
@pytest.mark.parametrize("arch", CNNS)
def test_cnn_model_forward_shapes(arch, pooling):
    model = build_model(make_config(arch, 64, zone_pooling=pooling))
    assert isinstance(model, CSIModel) and model.arch_name == arch
    x = torch.randn(2, 1, 64, 96)
    # The backbone's map is unpooled, output stride 32, rows and columns in image order.
    assert model.backbone(x).shape == (2, BACKBONES[arch].channels, 2, 3)
    logits = model(x)
    assert logits.shape == (2, len(ZONES), 5)
    assert torch.isfinite(logits).all()


def test_vit_loads_224_px_torchvision_weights_at_32_px(tmp_path):
    rgb = torchvision.models.vit_b_16()
    torch.save(rgb.state_dict(), tmp_path / "vit.pth")
    model = build_model(make_config("vit_b_16", 32, pretrained_path=str(tmp_path / "vit.pth"),
                                    zone_pooling="regional"))
    backbone = model.backbone
    torch.testing.assert_close(backbone.conv_proj.weight, rgb.conv_proj.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(backbone.encoder.ln.weight, rgb.encoder.ln.weight)
    assert backbone.encoder.pos_embedding.shape == (1, 1 + 2 * 2, 768)
    # The class token's position embedding is kept, the 14x14 patch grid is resized to 2x2.
    torch.testing.assert_close(backbone.encoder.pos_embedding[:, 0], rgb.encoder.pos_embedding[:, 0])
    x = torch.randn(2, 1, 32, 32)
    assert backbone(x).shape == (2, 768, 2, 2)
    assert model(x).shape == (2, len(ZONES), 5)


@pytest.mark.parametrize("image_size", [40, 232])
def test_vit_refuses_sizes_the_patches_do_not_tile(image_size):
    with pytest.raises(ConfigError, match=rf"image_size = {image_size} .*vit_b_16: expected a multiple of 16"):
        get_backbone("vit_b_16", image_size=image_size)


def test_densenet_refuses_images_too_small_for_its_pooling():
    with pytest.raises(ConfigError, match=">= 32"):
        get_backbone("densenet121", image_size=16)


@pytest.mark.parametrize(
    "arch, first_conv, rgb_features",
    [
        ("resnet50", "conv1", lambda m, x: torch.nn.Sequential(*list(m.children())[:-2])(x)),
        ("densenet121", "features.conv0", lambda m, x: F.relu(m.features(x))),
    ],
)
def test_grey_backbone_equals_torchvision_rgb_model_on_repeated_grey(tmp_path, arch, first_conv, rgb_features):
    rgb = torchvision.models.get_model(arch).eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey, _ = get_backbone(arch, pretrained_path=str(tmp_path / "rgb.pth"), image_size=64)
    grey.eval()
    x = torch.rand(2, 1, 64, 64) * 4 - 2
    rgb_x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            grey.get_submodule(first_conv)(x), rgb.get_submodule(first_conv)(rgb_x), rtol=1e-5, atol=1e-5
        )
        expected = rgb_features(rgb, rgb_x)
        torch.testing.assert_close(grey(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert grey.get_submodule(first_conv).in_channels == 1


def test_pretrained_path_reloads_own_backbone_state_dict(tmp_path):
    saved, _ = get_backbone("custom_cnn")
    torch.save(saved.state_dict(), tmp_path / "cnn.pth")
    loaded, _ = get_backbone("custom_cnn", pretrained_path=str(tmp_path / "cnn.pth"))
    fresh, _ = get_backbone("custom_cnn")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    assert not torch.equal(fresh.state_dict()["0.0.weight"], saved.state_dict()["0.0.weight"])


def test_pretrained_path_of_another_architecture_names_the_keys(tmp_path):
    cnn, _ = get_backbone("custom_cnn")
    path = tmp_path / "cnn.pth"
    torch.save(cnn.state_dict(), path)
    expected = r"cnn\.pth.*missing \['features\.conv0\.weight'.*unexpected \['0\.0\.weight'"
    with pytest.raises(ConfigError, match=expected):
        get_backbone("densenet121", pretrained_path=str(path))


def test_pretrained_path_with_wrong_shape_names_the_key(tmp_path):
    cnn, _ = get_backbone("custom_cnn")
    state = cnn.state_dict()
    state["4.1.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "cnn.pth")
    with pytest.raises(ConfigError, match=r"cnn\.pth.*4\.1\.weight: \(7,\) in the file, \(512,\) expected"):
        get_backbone("custom_cnn", pretrained_path=str(tmp_path / "cnn.pth"))


def test_pretrained_path_missing_or_not_a_state_dict(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.pth: file not found"):
        get_backbone("custom_cnn", pretrained_path=str(tmp_path / "absent.pth"))
    for name, content in (("notes.pth", "not a checkpoint"), ("empty.pth", "")):
        (tmp_path / name).write_text(content)
        with pytest.raises(ConfigError, match=rf"{re.escape(name)}: cannot be read as a state dict \(\w"):
            get_backbone("custom_cnn", pretrained_path=str(tmp_path / name))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match=r"list\.pth: expected a state dict"):
        get_backbone("custom_cnn", pretrained_path=str(tmp_path / "list.pth"))


def test_pretrained_without_cached_weights_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Any download must fail, also on a machine with network: point it at a closed local port.
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as error:
        build_model(make_config("resnet50", 64, pretrained=True))
    message = str(error.value)
    assert "\n" not in message
    assert "ResNet50_Weights.IMAGENET1K_V2" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "pretrained = false" in message and "pretrained_path" in message


def test_custom_cnn_has_no_imagenet_weights():
    with pytest.raises(ConfigError, match="custom_cnn has no ImageNet weights.*pretrained = false"):
        get_backbone("custom_cnn", pretrained=True)


def test_unknown_architecture_is_refused():
    with pytest.raises(ConfigError, match="model_arch = 'resnet18'.*resnet50.*timm:<name> or hf:<repo>"):
        get_backbone("resnet18")


def _perturbed_zones(head: ZoneHead, rows: slice, cols: slice) -> set[str]:
    """Zones whose logits change when only features[..., rows, cols] change."""
    torch.manual_seed(0)
    features = torch.randn(1, 8, 6, 4)
    changed = features.clone()
    changed[:, :, rows, cols] += 1.0
    with torch.no_grad():
        diff = (head(changed) - head(features)).abs().amax(dim=2)[0]
    return {zone for zone, d in zip(ZONES, diff) if d > 1e-6}


# On a frontal radiograph the patient's right lung lies on the image's left.
REGIONS = {
    f"{side}_{level}": (slice(2 * row, 2 * row + 2), slice(2 * col, 2 * col + 2))
    for row, level in enumerate(("sup", "mid", "inf"))
    for col, side in enumerate(("right", "left"))
}


@pytest.mark.parametrize("zone", ZONES)
def test_regional_head_reads_only_its_own_region(zone):
    head = ZoneHead(8, pooling="regional").eval()
    assert _perturbed_zones(head, *REGIONS[zone]) == {zone}


def test_global_head_reads_the_whole_map():
    head = ZoneHead(8, pooling="global").eval()
    assert _perturbed_zones(head, *REGIONS["right_sup"]) == set(ZONES)


def test_unknown_pooling_is_refused():
    with pytest.raises(ConfigError, match="zone_pooling = 'local'"):
        ZoneHead(8, pooling="local")
