"""precision = auto: a measured, cached pick that leaves the run's random draws alone."""

from __future__ import annotations

import json

import pytest
import torch

from src.config.loader import apply_overrides, load_config
from src.training.loop import LoopSettings
from src.training.precision import Precision, candidates, choose_precision, pick
from src.utils.device import cpu_has_fast_bf16

CPU = torch.device("cpu")
FP32, BF16, BF16_CL = Precision("fp32", False), Precision("bf16", False), Precision("bf16", True)


def _cfg(**values):
    return apply_overrides(load_config(None, env={}), {
        "Model.model_arch": "custom_cnn", "Model.pretrained": False, "Data.image_size": 32,
        "Training.batch_size": 8, **values})


def test_pick_keeps_fp32_unless_a_reduced_precision_is_clearly_faster():
    assert pick({FP32: 1.0, BF16: 0.97, BF16_CL: 0.98}) == FP32  # within noise: exact arithmetic
    assert pick({FP32: 1.0, BF16: 0.6, BF16_CL: 0.4}) == BF16_CL
    assert pick({FP32: 1.0, BF16: 1.4, BF16_CL: 1.2}) == FP32  # slower in bf16: never bf16


def test_candidates_follow_the_device_and_the_channels_last_setting():
    assert candidates(CPU, "false") == ([FP32, BF16] if cpu_has_fast_bf16() else [FP32])
    assert candidates(CPU, "auto") == ([FP32, BF16, BF16_CL] if cpu_has_fast_bf16() else [FP32])
    assert candidates(CPU, "true")[0] == Precision("fp32", True)


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16: auto is fp32 without measuring")
def test_auto_measures_once_caches_the_pick_and_keeps_the_random_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = _cfg()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    choice = choose_precision(cfg, CPU)
    assert torch.equal(torch.get_rng_state(), state)
    cache = tmp_path / "csi-predictor" / "precision.json"
    (key, entry), = json.loads(cache.read_text()).items()
    assert "custom_cnn" in key and "32px" in key
    assert (entry["precision"], entry["channels_last"]) == (choice.name, choice.channels_last)
    assert set(entry["images_per_second"]) == {str(c) for c in candidates(CPU, "auto")}
    # A second run reads the pick instead of measuring again: change it and the settings follow.
    other = FP32 if choice != FP32 else BF16_CL
    cache.write_text(json.dumps({key: {**entry, "precision": other.name, "channels_last": other.channels_last}}))
    settings = LoopSettings.from_config(cfg, CPU)
    assert (settings.dtype, settings.channels_last) == (other.dtype, other.channels_last)
    # An explicit precision is never measured.
    assert LoopSettings.from_config(_cfg(**{"Training.precision": "fp32"}), CPU).dtype == torch.float32
