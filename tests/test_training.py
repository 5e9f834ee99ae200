"""Loss, callbacks, optimiser/scheduler, checkpoints and the training loop in-process."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.config.loader import apply_overrides, load_config
from src.engine.settings import LoopSettings
from src.models.factory import build_model
from src.training.callbacks import EarlyStopping, MetricsTracker, resolve_mode
from src.training.loop import TrainingDiverged, train_epoch
from src.training.loss import WeightedCSILoss
from src.training.optimizer import create_optimizer, create_scheduler
from src.training.trainer import train_model
from src.utils.checkpoint import load_checkpoint, save_checkpoint
from src.utils.errors import CheckpointError
from tests.conftest import write_config


def test_weighted_csi_loss_is_the_weighted_mean_of_cross_entropies():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5)
    targets = torch.tensor([[0, 1, 2, 3, 4, 4], [4, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 4]])
    per_target = F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), reduction="none")
    weights = torch.where(targets.reshape(-1) == 4, 0.3, 1.0)
    expected = (weights * per_target).sum() / weights.sum()
    assert torch.allclose(WeightedCSILoss(0.3)(logits, targets), expected)
    # unknown_weight = 0 ignores Unknown targets entirely.
    known = targets.reshape(-1) != 4
    assert torch.allclose(WeightedCSILoss(0.0)(logits, targets), per_target[known].mean())


def test_early_stopping_restores_a_copy_of_the_best_weights_not_live_tensors():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2, min_delta=0.0, mode="max")
    assert not stopper.step(0.5, 1, model)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on and changes the live tensors
    assert not stopper.step(0.4, 2, model)
    assert stopper.step(0.3, 3, model)  # patience 2 exhausted
    assert stopper.restore(model)
    assert torch.equal(model.weight, best) and stopper.best_epoch == 1


def test_metric_direction():
    assert resolve_mode("val_loss") == "min" and resolve_mode("val_csi_mae") == "min"
    assert resolve_mode("val_f1_macro") == "max" and resolve_mode("val_loss", "max") == "max"
    tracker = MetricsTracker()
    for epoch, value in enumerate([0.2, 0.5, float("nan"), 0.4], 1):
        tracker.update({"epoch": epoch, "val_f1_macro": value})
    assert tracker.best("val_f1_macro", "max")["epoch"] == 2


def test_plateau_scheduler_follows_the_metric_direction():
    cfg = apply_overrides(load_config(None, env={}), {"Optimization.patience": 0, "Optimization.factor": 0.5})
    model = nn.Linear(2, 2)
    optimizer = create_optimizer(model, cfg)
    schedule = create_scheduler(optimizer, cfg, resolve_mode("val_f1_macro"))
    for value in (0.1, 0.2, 0.3):  # an accuracy going up must never cut the LR
        schedule.step_epoch(value)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    schedule.step_epoch(0.3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0005)


def test_no_weight_decay_on_biases_and_norms():
    cfg = load_config(None, env={})
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    groups = create_optimizer(model, cfg).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == cfg.optimization.weight_decay and groups[1]["weight_decay"] == 0
    everything = create_optimizer(model, apply_overrides(cfg, {"Optimization.no_decay_norm_bias": False}))
    assert [len(g["params"]) for g in everything.param_groups] == [4]


def test_checkpoint_round_trip_and_architecture_check(tmp_path):
    cfg = apply_overrides(load_config(None, env={}), {"Model.model_arch": "custom_cnn", "Model.pretrained": False})
    model = build_model(cfg)
    save_checkpoint(tmp_path / "m.pth", {"model": model.state_dict(), "arch": model.arch_name, "epoch": 3,
                                         "config": "[Model]\n"})
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file
    other = build_model(cfg)
    state = load_checkpoint(other, tmp_path / "m.pth")
    assert state["epoch"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    state["arch"] = "resnet50"
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="is a resnet50 model, not custom_cnn"):
        load_checkpoint(other, tmp_path / "other.pth")


class _Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x.mean() * self.weight * float("inf")).expand(x.shape[0], 6, 5)


def test_non_finite_steps_are_skipped_then_stop_training():
    data = [(torch.ones(2, 1, 4, 4), torch.zeros(2, 6, dtype=torch.long), ["a", "b"])] * 5
    model = _Exploding()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        train_epoch(model, data, WeightedCSILoss(), optimizer, torch.device("cpu"), 1,
                    LoopSettings(max_nonfinite_steps=3, progress=False))
    assert model.weight.item() == 1.0  # no update was applied from a non-finite loss


def test_same_seed_same_history(tiny_dataset, tmp_path):
    def run(name):
        path = write_config(tmp_path / name / "config" / "config.ini", tiny_dataset,
                            Training={"n_epochs": 2, "run_name": name})
        result = train_model(load_config(path, env={}))
        return json.loads((result.run_dir / "logs" / "validation_history.json").read_text()), result

    first, result = run("a")
    second, _ = run("b")
    assert [h["val_loss"] for h in first] == [h["val_loss"] for h in second]
    assert not math.isnan(first[-1]["val_loss"]) and result.best_epoch in (1, 2)
