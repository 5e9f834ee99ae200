"""Fine-tuning pretrained backbones: freezing per family, the frozen backbone's feature cache, layer decay,
EMA of the weights, and a run's best_model.pth as the next one's pretrained_path. Tiny real runs."""

from __future__ import annotations

import pytest

from src.config.loader import apply_overrides, load_config
from src.models.factory import build_model
from src.training.optimizer import create_optimizer, create_scheduler


def test_layer_decay_and_head_multiplier_give_each_group_its_learning_rate():
    cfg = apply_overrides(load_config(None, env={}), {
        "Model.model_arch": "custom_cnn", "Model.pretrained": False, "Data.image_size": 32,
        "Training.learning_rate": 0.01, "Optimization.layer_decay": 0.5, "Optimization.head_lr_multiplier": 4,
        "Optimization.scheduler": "onecycle"})
    model = build_model(cfg)
    optimizer = create_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        # custom_cnn's five blocks are named 0..4: block 4 is one below the head
        expected = 0.04 if name.startswith("head.") else 0.01 * 0.5 ** (5 - int(name.split(".")[1]))
        assert lr_of[id(param)] == pytest.approx(expected), name
    schedule = create_scheduler(optimizer, cfg, "max", steps_per_epoch=10)  # onecycle peaks at each group's lr
    assert [g["max_lr"] for g in optimizer.param_groups] == pytest.approx([g["lr_scale"] * 0.01
                                                                          for g in optimizer.param_groups])
    assert schedule.per_step
