"""The training engine: accumulation, clipping, schedules, top-k, exact resume, debug runs,
precision and distributed training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from src.config.loader import apply_overrides, load_config
from src.engine.settings import LoopSettings
from src.training.loop import train_epoch
from src.training.loss import WeightedCSILoss
from src.training.optimizer import create_optimizer, create_scheduler
from src.training.parallel import wrap_model
from src.training.trainer import DebugRun, _Trainer, train_model
from src.utils.device import resolve_precision
from src.utils.distributed import DistInfo
from src.utils.errors import ConfigError
from tests.conftest import REPO, run_main, write_config

CPU = torch.device("cpu")
# Deterministic keys of a history row (timings are not).
STABLE = ("train_loss", "train_f1_macro", "lr", "grad_norm", "val_loss", "val_f1_macro", "val_qwk", "val_csi_mae")


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 30), nn.Unflatten(1, (6, 5)))


def batches(n: int, size: int, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 4, 4, generator=generator), torch.randint(0, 5, (size, 6), generator=generator),
             [""] * size) for _ in range(n)]


def quiet(**kwargs) -> LoopSettings:
    return LoopSettings(progress=False, **kwargs)


def test_accumulated_small_batches_equal_one_big_batch():
    data = batches(2, 4)
    big = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]), [""] * 8)]
    accumulated, single = linear_model(), linear_model()
    loss = WeightedCSILoss(unknown_weight=1.0)  # equal weights: the mean of two means is the big mean
    train_epoch(accumulated, data, loss, torch.optim.SGD(accumulated.parameters(), lr=0.5), CPU, 1,
                quiet(grad_accumulation=2))
    train_epoch(single, big, loss, torch.optim.SGD(single.parameters(), lr=0.5), CPU, 1, quiet())
    for a, b in zip(accumulated.parameters(), single.parameters()):
        torch.testing.assert_close(a, b)


def test_last_partial_accumulation_group_is_applied():
    model = linear_model()
    optimizer = torch.optim.Adam(model.parameters())
    train_epoch(model, batches(3, 4), WeightedCSILoss(), optimizer, CPU, 1, quiet(grad_accumulation=2))
    assert int(optimizer.state[model[1].weight]["step"]) == 2


def test_gradient_clipping_bounds_the_update_and_logs_the_norm():
    model = linear_model()
    before = [p.detach().clone() for p in model.parameters()]
    metrics = train_epoch(model, batches(1, 8), WeightedCSILoss(), torch.optim.SGD(model.parameters(), lr=1.0),
                          CPU, 1, quiet(max_grad_norm=0.01))
    change = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert metrics["grad_norm"] > 0.01 and change <= 0.01 + 1e-6


@pytest.mark.parametrize("name", ["reduce_lr_on_plateau", "step", "exponential", "cosine", "cosine_warm_restarts",
                                  "onecycle", "warmup_cosine", "none"])
def test_every_scheduler_runs_and_onecycle_steps_per_batch(name):
    cfg = apply_overrides(load_config(None, env={}), {"Optimization.scheduler": name, "Training.n_epochs": 4,
                                                      "Optimization.warmup_epochs": 2})
    model = linear_model()
    optimizer = create_optimizer(model, cfg)
    schedule = create_scheduler(optimizer, cfg, "max", steps_per_epoch=3)
    rates = []
    for _ in range(4):
        train_epoch(model, batches(3, 4), WeightedCSILoss(), optimizer, CPU, 1, quiet(),
                    batch_scheduler=schedule.scheduler if schedule.per_step else None)
        schedule.step_epoch(0.5)
        rates.append(optimizer.param_groups[0]["lr"])
    assert schedule.per_step == (name == "onecycle")
    if name == "warmup_cosine":
        assert rates[0] > 0.001 / 3 and rates[1] == pytest.approx(0.001) and rates[3] < rates[1]
    if name == "onecycle":
        assert schedule.scheduler.last_epoch == 12  # 4 epochs x 3 optimizer steps
    if name == "none":
        assert rates == [0.001] * 4


def _config(tmp_path, dataset, **training):
    path = write_config(tmp_path / "config" / "config.ini", dataset,
                        Training={"n_epochs": 3, **training}, Optimization={"scheduler": "onecycle"},
                        Callbacks={"save_top_k": 2})
    return load_config(path, env={})


def _history(run_dir):
    logs = run_dir / "logs"
    rows = zip(json.loads((logs / "training_history.json").read_text()),
               json.loads((logs / "validation_history.json").read_text()))
    return [{k: {**t, **v}[k] for k in STABLE} for t, v in rows]


class _Crash(Exception):
    pass


def test_resumed_run_has_exactly_the_uninterrupted_history(tiny_dataset, tmp_path):
    cfg = _config(tmp_path, tiny_dataset)
    full = train_model(cfg)

    def crash_after_first_epoch(epoch, metrics):
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train_model(cfg, on_epoch_end=crash_after_first_epoch)
    interrupted = max((tmp_path / "models").iterdir(), key=lambda p: p.stat().st_mtime)
    assert interrupted != full.run_dir and len(_history(interrupted)) == 1
    resumed = train_model(cfg, resume=interrupted)
    assert resumed.run_dir == interrupted
    assert _history(resumed.run_dir) == _history(full.run_dir)
    kept = sorted(p.name for p in interrupted.glob("checkpoint_epoch_*.pth"))
    values = {h["epoch"]: h["val_f1_macro"] for h in json.loads((interrupted / "logs" / "validation_history.json")
                                                              .read_text())}
    best_two = sorted(values, key=values.get, reverse=True)[:2]
    assert kept == sorted(f"checkpoint_epoch_{e}.pth" for e in best_two)


def test_fast_dev_run_writes_nothing_and_overfit_batches_learns(tiny_dataset, tmp_path):
    path = write_config(tmp_path / "config" / "config.ini", tiny_dataset, Training={"n_epochs": 12,
                        "learning_rate": 0.01}, Augmentation={"enabled": "false"}, Model={"dropout": 0.0})
    result = run_main("--mode", "train", "--fast-dev-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "models").exists() and "fast dev run" in result.stdout
    cfg = load_config(path, env={})
    overfit = train_model(cfg, debug=DebugRun(overfit_batches=1))
    history = _history(overfit.run_dir)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_f1_macro"] > 0.8  # validation is the same batch


def test_precision_choices():
    assert resolve_precision("fp32", CPU) == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_compile_wraps_the_model_and_checkpoints_stay_plain():
    model = linear_model()
    net = wrap_model(model, compiled=True, dist=DistInfo(), device=CPU)
    assert net is not model and net._orig_mod is model
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())


def test_two_process_gloo_training_matches_single_process(tiny_dataset, tmp_path):
    write_config(tmp_path / "config" / "config.ini", tiny_dataset,
                 Training={"n_epochs": 2, "batch_size": 8, "precision": "fp32"},
                 Augmentation={"enabled": "false"}, Model={"dropout": 0.0})
    single = run_main("--mode", "train", "--set", "Training.run_name=single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "main.py"),
                          "--mode", "train", "--set", "Training.run_name=ddp"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    runs = {p.name.rsplit("_", 1)[-1]: p for p in (tmp_path / "models").iterdir()}
    assert set(runs) == {"single", "ddp"}  # one run directory: only rank 0 writes
    one, two = _history(runs["single"]), _history(runs["ddp"])
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        # Same global batches and steps; on CPU BatchNorm cannot be synchronised, so each process
        # normalises its half-batch: training-mode losses differ, eval-mode results stay close.
        assert b["lr"] == a["lr"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.05)
    n_val = (runs["ddp"] / "split.csv").read_text().count(",val")
    for run in runs.values():  # metrics over the whole validation split, not rank 0's share
        assert [h["val_images"] for h in json.loads((run / "logs" / "validation_history.json").read_text())] \
            == [n_val, n_val]


def test_distillation_trains_a_student_from_a_teacher_run(tiny_dataset, tmp_path):
    teacher_cfg = _config(tmp_path, tiny_dataset, n_epochs=1, run_name="teacher")
    teacher = train_model(teacher_cfg)
    teacher_checkpoint = str(teacher.run_dir / "best_model.pth")
    student_cfg = apply_overrides(teacher_cfg, {"Distillation.teacher_checkpoint": teacher_checkpoint,
                                                "Training.run_name": "student", "Model.dropout": 0.1})
    student = train_model(student_cfg)
    assert len(_history(student.run_dir)) == 1
    assert "teacher_checkpoint = " + str(teacher.run_dir) in (student.run_dir / "config.ini").read_text()
    bad = apply_overrides(student_cfg, {"Data.image_size": 64})
    with pytest.raises(ConfigError, match="image_size"):
        train_model(bad)


def test_augmentation_keys_reach_the_training_batches(tiny_dataset, tmp_path):
    base = _config(tmp_path, tiny_dataset, n_epochs=1)
    plain = train_model(apply_overrides(base, {"Augmentation.enabled": False}))
    again = train_model(apply_overrides(base, {"Augmentation.enabled": False}))
    flipped = train_model(apply_overrides(base, {"Augmentation.horizontal_flip": 1.0}))
    assert _history(plain.run_dir) == _history(again.run_dir)
    assert _history(flipped.run_dir)[0]["train_loss"] != _history(plain.run_dir)[0]["train_loss"]


@pytest.mark.parametrize("setting, precision, expected", [("true", "fp32", True), ("false", "bf16", False),
                                                          ("auto", "bf16", True), ("auto", "fp32", False)])
def test_channels_last_setting_reaches_model_and_batches(tiny_dataset, tmp_path, setting, precision, expected):
    cfg = apply_overrides(_config(tmp_path, tiny_dataset), {"Training.channels_last": setting,
                                                            "Training.precision": precision})
    trainer = _Trainer(cfg, None, DebugRun(fast_dev_run=True), None)
    conv = next(p for p in trainer.model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) == expected
    assert trainer.settings.channels_last == expected


def _tensor_bytes(value) -> int:
    """Bytes of every tensor inside a (nested) checkpoint value."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def test_best_checkpoint_early_stopping_and_result_agree(tiny_dataset, tmp_path):
    """With a min_delta no later epoch can beat, epoch 1 stays the best: best_model.pth, early stopping,
    TrainResult and the weights it carries all say so, and no checkpoint holds a second copy of the weights."""
    cfg = apply_overrides(_config(tmp_path, tiny_dataset, n_epochs=5),
                          {"Callbacks.monitor": "val_loss", "Callbacks.early_stopping_min_delta": 10.0,
                           "Callbacks.early_stopping_patience": 2, "Callbacks.restore_best_weights": True})
    result = train_model(cfg)
    history = json.loads((result.run_dir / "logs" / "validation_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]  # stopped after two epochs without improvement
    best = torch.load(result.run_dir / "best_model.pth", weights_only=True)
    last = torch.load(result.run_dir / "last_model.pth", weights_only=True)
    assert best["epoch"] == result.best_epoch == 1 and last["epoch"] == 3
    assert result.best_metrics["val_loss"] == history[0]["val_loss"]

    weights = result.model.state_dict()  # the best epoch's, not the last one's
    assert all(torch.equal(weights[k].cpu(), best["model"][k]) for k in weights)
    assert any(not torch.equal(last["model"][k], best["model"][k]) for k in weights)

    for checkpoint in (best, last):
        assert _tensor_bytes(checkpoint) == _tensor_bytes(checkpoint["model"]) + _tensor_bytes(checkpoint["optimizer"])
    assert _tensor_bytes(last["model"]) == _tensor_bytes(weights)
