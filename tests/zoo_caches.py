"""Weights in each library's own on-disk format, from tiny randomly initialised models, for tests.

Each writer puts its file exactly where the library's download would: huggingface_hub's cache
layout (blobs, snapshots/<revision>/ links, refs/main), torchxrayvision's models_data file named
after its release URL, torchvision's TORCH_HOME/hub/checkpoints file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

REVISION = "0123456789abcdef0123456789abcdef01234567"
RADDINO_PREPROCESSOR = {"crop_size": {"height": 56, "width": 56}, "do_center_crop": True, "do_normalize": True,
                        "do_rescale": True, "rescale_factor": 1 / 255, "image_mean": [0.5307, 0.5307, 0.5307],
                        "image_std": [0.2583, 0.2583, 0.2583], "size": {"shortest_edge": 56},
                        "image_processor_type": "BitImageProcessor"}


def write_hub_snapshot(hub_cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Put `files` (name -> file) into huggingface_hub's cache layout for `repo`; the snapshot dir."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / REVISION
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    return snapshot


def tiny_dinov2(seed: int = 0):
    """A 2-layer, 32-wide DINOv2 with RAD-DINO's patch size, randomly initialised."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56)
    return Dinov2Model(config).eval()


def write_raddino_cache(hf_home: Path, work: Path) -> tuple[object, Path]:
    """A tiny RAD-DINO in HF_HOME's hub cache as microsoft/rad-dino; (the model, its snapshot dir)."""
    model = tiny_dinov2()
    saved = work / "saved_raddino"
    model.save_pretrained(saved)
    (saved / "preprocessor_config.json").write_text(json.dumps(RADDINO_PREPROCESSOR))
    files = {name: saved / name for name in ("config.json", "model.safetensors", "preprocessor_config.json")}
    return model, write_hub_snapshot(hf_home / "hub", "microsoft/rad-dino", files)


def write_timm_cache(hf_home: Path, work: Path, name: str) -> object:
    """timm's `name` (e.g. test_resnet.r160_in1k), randomly initialised, as its hub repo's model.safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    file = work / f"{name}.safetensors"
    save_file(model.state_dict(), file)
    write_hub_snapshot(hf_home / "hub", model.pretrained_cfg["hf_hub_id"], {"model.safetensors": file})
    return model


def write_xrv_cache(home: Path, weights: str) -> object:
    """torchxrayvision's DenseNet121, randomly initialised, saved as its `weights` file in ~/.torchxrayvision."""
    import torchxrayvision

    torch.manual_seed(0)
    model = torchxrayvision.models.DenseNet(num_classes=18).eval()
    url = torchxrayvision.models.model_urls[weights]["weights_url"]
    folder = home / ".torchxrayvision" / "models_data"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model, folder / os.path.basename(url))  # torchxrayvision's files are whole pickled models
    return model


def write_torchvision_cache(torch_home: Path, weights: str) -> object:
    """torchvision's model of `weights` (e.g. DenseNet121_Weights.IMAGENET1K_V1), randomly initialised,
    as its TORCH_HOME/hub/checkpoints file."""
    from urllib.parse import urlparse

    import torchvision

    torch.manual_seed(0)
    entry = torchvision.models.get_weight(weights)
    model = torchvision.models.get_model(weights.split("_Weights")[0].lower()).eval()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / Path(urlparse(entry.url).path).name)
    return model


def write_hf_vit_cache(hf_home: Path, work: Path, repo: str) -> object:
    """A tiny transformers ViT (patch 8, 32 px, no pooler) in HF_HOME's hub cache as `repo`."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=8, image_size=32)
    model = ViTModel(config, add_pooling_layer=False).eval()
    saved = work / "saved_vit"
    model.save_pretrained(saved)
    write_hub_snapshot(hf_home / "hub", repo, {n: saved / n for n in ("config.json", "model.safetensors")})
    return model
