"""precision = auto: a measured, cached pick that leaves the run's random draws alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src.config.loader import apply_overrides, load_config
from src.engine.precision import Precision, candidates, choose_precision, pick
from src.engine.settings import LoopSettings
from src.utils.device import cpu_has_fast_bf16
from tests.conftest import run_main, write_config, write_png_dataset

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


def test_onednn_isa_cap_below_bf16_takes_bf16_away_whatever_the_cpu(monkeypatch):
    uncapped = cpu_has_fast_bf16()
    for cap in ("AVX2", "avx2", "AVX512_CORE", "AVX512_CORE_VNNI", "SSE41"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert not cpu_has_fast_bf16() and candidates(CPU, "auto") == [FP32]
    for cap in ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10_1_512_AMX"):  # no cap below bf16
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert cpu_has_fast_bf16() == uncapped
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN's older name for the same cap
    assert not cpu_has_fast_bf16()


def test_a_lone_candidate_is_recorded_unmeasured_and_said_once(tmp_path, monkeypatch, log_messages):
    """The AVX2 branch on any CPU: capped at AVX2, auto has fp32 alone; it picks it without timing a
    step, says why, and records the pick so that later runs say nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert choose_precision(_cfg(), CPU) == FP32
    (key, entry), = json.loads((tmp_path / "csi-predictor" / "precision.json").read_text()).items()
    assert "isa<=AVX2" in key and entry == {"precision": "fp32", "channels_last": False, "images_per_second": {}}
    said = [m for m in log_messages if "precision = auto" in m]
    assert len(said) == 1 and "only candidate" in said[0] and "ONEDNN_MAX_CPU_ISA=AVX2" in said[0]
    assert choose_precision(_cfg(), CPU) == FP32 and len([m for m in log_messages if "precision = auto" in m]) == 1


def test_training_under_an_avx2_cap_runs_in_fp32(tmp_path):
    """A whole run with precision = auto in a process whose oneDNN is capped at AVX2."""
    write_png_dataset(tmp_path / "data", np.random.default_rng(0).integers(0, 4, (12, 6)))
    write_config(tmp_path / "config" / "config.ini", tmp_path / "data",
                 Training={"precision": "auto", "n_epochs": 1, "channels_last": "auto"})
    result = run_main("--mode", "train", cwd=tmp_path, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    assert "precision = auto: fp32, the only candidate" in result.stderr
    assert "custom_cnn on cpu x1 (float32)" in result.stderr


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="the bf16 branch needs a CPU with AMX or AVX-512-BF16 "
                    "(and no ONEDNN_MAX_CPU_ISA cap below it); this one runs auto's fp32-only branch")
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


def test_scoring_takes_the_training_pick_and_never_measures(tmp_path, monkeypatch):
    """Evaluation and prediction (measure=False) read the pick training recorded, or run fp32."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "csi-predictor" / "precision.json"
    assert LoopSettings.from_config(_cfg(), CPU, measure=False).dtype == torch.float32 and not cache.exists()
    choose_precision(_cfg(), CPU)  # training's pick, whatever this CPU makes it
    (key, entry), = json.loads(cache.read_text()).items()
    cache.write_text(json.dumps({key: {**entry, "precision": "bf16", "channels_last": True}}))
    settings = LoopSettings.from_config(_cfg(), CPU, measure=False)
    assert (settings.dtype, settings.channels_last) == (torch.bfloat16, True)
