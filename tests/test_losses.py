"""[Loss] criteria and [Distillation]: values against reference computations, and a real teacher checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.config.loader import apply_overrides
from src.config.render import render_ini
from src.config.schema import Config
from src.engine.probabilities import LOSS_NAMES, probabilities_for
from src.models.factory import build_model
from src.training.distillation import DistillationLoss, build_distillation, load_teacher
from src.training.loss import (
    FocalLoss,
    LabelSmoothingLoss,
    OrdinalLoss,
    WeightedCSILoss,
    balanced_class_weights,
    build_criterion,
)
from src.utils.checkpoint import save_checkpoint
from src.utils.errors import ConfigError

TARGETS = torch.tensor([[0, 1, 2, 3, 4, 4], [4, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 4]])


def config(**values) -> Config:
    return apply_overrides(Config(), values)


def logits_like(targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.randn(*targets.shape, 5, generator=torch.Generator().manual_seed(seed))


def test_weighted_ce_uses_each_zones_class_weights():
    logits = logits_like(TARGETS)
    class_weights = torch.rand(6, 4, generator=torch.Generator().manual_seed(1)) + 0.5
    per_target = F.cross_entropy(logits.reshape(-1, 5), TARGETS.reshape(-1), reduction="none").reshape(3, 6)
    weights = torch.tensor([[0.3 if t == 4 else float(class_weights[z, t]) for z, t in enumerate(row)]
                            for row in TARGETS.tolist()])
    expected = (weights * per_target).sum() / weights.sum()
    assert torch.allclose(WeightedCSILoss(0.3, class_weights=class_weights)(logits, TARGETS), expected)


def test_focal_loss_is_weighted_ce_at_gamma_0_and_down_weights_easy_targets():
    logits = logits_like(TARGETS)
    assert torch.allclose(FocalLoss(0.0, 0.3)(logits, TARGETS), WeightedCSILoss(0.3)(logits, TARGETS))
    per_target = F.cross_entropy(logits.reshape(-1, 5), TARGETS.reshape(-1), reduction="none")
    p = torch.exp(-per_target)
    weights = torch.where(TARGETS.reshape(-1) == 4, 0.3, 1.0)
    expected = (weights * (1 - p) ** 2 * per_target).sum() / weights.sum()
    assert torch.allclose(FocalLoss(2.0, 0.3)(logits, TARGETS), expected)


def test_focal_loss_gradient_stays_finite_for_a_certain_prediction():
    logits = torch.tensor([[[200.0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]], requires_grad=True)
    FocalLoss(0.5)(logits, torch.tensor([[0, 1]])).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1].abs().sum() > 0


def test_label_smoothing_spreads_over_the_scores_and_keeps_unknown_one_hot():
    known = torch.tensor([[0, 1, 2, 3, 3, 0], [2, 2, 1, 0, 3, 1]])
    logits = logits_like(known)
    # With Unknown ruled out, smoothing over the four scores is torch's label smoothing over 4 classes.
    logits[..., 4] = -1e4
    expected = F.cross_entropy(logits[..., :4].reshape(-1, 4), known.reshape(-1), label_smoothing=0.2)
    assert torch.allclose(LabelSmoothingLoss(0.2)(logits, known), expected, atol=1e-5)
    unknown = torch.full((1, 6), 4)
    logits = logits_like(unknown)
    assert torch.allclose(LabelSmoothingLoss(0.2)(logits, unknown), -F.log_softmax(logits, -1)[..., 4].mean())


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_every_loss_weighs_unknown_targets_by_unknown_weight(loss_name):
    known_image = torch.tensor([[0, 1, 2, 3, 2, 1]])
    unknown_image = torch.full((1, 6), 4)
    targets = torch.cat([known_image, unknown_image])
    logits = logits_like(targets, seed=3)

    def loss(unknown_weight: float, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return build_criterion(config(**{"Loss.loss": loss_name, "Loss.unknown_weight": unknown_weight}))(
            logits, targets)

    known_mean, unknown_mean = loss(1.0, logits[:1], known_image), loss(1.0, logits[1:], unknown_image)
    for w in (0.0, 0.3, 2.0):
        expected = (6 * known_mean + w * 6 * unknown_mean) / (6 + w * 6)
        assert torch.allclose(loss(w, logits, targets), expected, atol=1e-6)
    # unknown_weight = 0: whatever the model says about Unknown zones does not matter.
    changed = logits.clone()
    changed[1] = torch.randn(6, 5) * 10
    assert torch.allclose(loss(0.0, changed, targets), loss(0.0, logits, targets))


def test_balanced_weights_favour_rare_classes_and_average_1_per_zone():
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=(200, 6), p=[0.6, 0.25, 0.1, 0.03, 0.02])
    labels[:, 5] = np.where(labels[:, 5] == 3, 0, labels[:, 5])  # score 3 never seen in the last zone
    weights = balanced_class_weights(labels).numpy()
    for zone in range(6):
        column = labels[:, zone]
        known = column[column != 4]
        assert np.isclose(weights[zone, known].mean(), 1.0)
        assert weights[zone, 0] < weights[zone, 1] < weights[zone, 2]
    assert weights[5, 3] == weights[5].max()  # an unseen class weighs like the rarest seen one

    cfg = config(**{"Loss.class_weights": "balanced", "Loss.unknown_weight": 0.5})
    criterion = build_criterion(cfg, labels)
    targets = torch.as_tensor(labels[:4])
    logits = logits_like(targets)
    per_target = -F.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    target_weights = torch.tensor([[0.5 if t == 4 else float(weights[z, t]) for z, t in enumerate(row)]
                                   for row in labels[:4]])
    expected = (target_weights * per_target).sum() / target_weights.sum()
    assert torch.allclose(criterion(logits, targets), expected)
    with pytest.raises(ValueError, match="balanced"):
        build_criterion(cfg, None)


def test_ordinal_probabilities_are_a_distribution_with_ordered_cumulatives():
    logits = torch.randn(64, 6, 5, generator=torch.Generator().manual_seed(0)) * 8
    probs = OrdinalLoss().probabilities(logits)
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(64, 6))
    assert torch.allclose(probs[..., 4], torch.sigmoid(logits[..., 4]))
    above = 1 - torch.cumsum(probs[..., :4], -1)[..., :3] - probs[..., 4:]  # P(score > k), k = 0, 1, 2
    assert (above[..., 1:] <= above[..., :-1] + 1e-6).all()
    assert torch.equal(probabilities_for("ordinal")(logits), probs)


def test_ordinal_loss_is_unknown_bce_plus_corn_loss():
    logits = logits_like(TARGETS)
    bce = F.binary_cross_entropy_with_logits
    expected_total, weight_total = 0.0, 0.0
    for b, z in np.ndindex(*TARGETS.shape):
        y, row = int(TARGETS[b, z]), logits[b, z]
        term = bce(row[4], torch.tensor(float(y == 4)))
        if y != 4:  # CORN: task k is trained on the targets with score >= k
            term = term + sum(bce(row[k], torch.tensor(float(y > k))) for k in range(min(y, 2) + 1))
        weight = 0.3 if y == 4 else 1.0
        expected_total, weight_total = expected_total + weight * term, weight_total + weight
    assert torch.allclose(OrdinalLoss(0.3)(logits, TARGETS), expected_total / weight_total)


def test_ordinal_loss_learns_ordered_scores():
    torch.manual_seed(0)
    x = torch.rand(100, 6, 1) * 4
    targets = x[..., 0].long().clamp_max(3)
    targets[:10] = 4  # some ungradable images, flagged by a negative feature
    x[:10] = -1.0
    slope, bias = torch.zeros(5, requires_grad=True), torch.zeros(5, requires_grad=True)

    def model(x: torch.Tensor) -> torch.Tensor:  # one linear logit per class, elementwise: fast on CPU
        return x * slope + bias

    criterion = OrdinalLoss(unknown_weight=1.0)
    optimizer = torch.optim.Adam([slope, bias], lr=0.1)
    losses = []
    for _ in range(300):
        loss = criterion(model(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    predicted = criterion.probabilities(model(x)).argmax(-1)
    assert (predicted == targets).float().mean() > 0.9
    grid = criterion.probabilities(model(torch.linspace(0, 4, 50)[:, None])).argmax(-1)
    assert (grid.diff() >= 0).all() and set(grid.tolist()) == {0, 1, 2, 3}


def test_every_criterion_maps_logits_like_probabilities_for_its_name():
    logits = logits_like(TARGETS)
    for name in LOSS_NAMES:
        criterion = build_criterion(config(**{"Loss.loss": name}))
        assert torch.allclose(criterion.probabilities(logits), probabilities_for(name)(logits))
    assert torch.allclose(probabilities_for("focal")(logits), torch.softmax(logits, -1))
    with pytest.raises(ValueError, match="ordinal"):
        probabilities_for("hinge")


@pytest.mark.parametrize("base", [WeightedCSILoss(0.3), OrdinalLoss(0.3)], ids=["softmax", "ordinal"])
def test_distillation_mixes_the_label_loss_and_the_softened_kl(base):
    student, teacher = logits_like(TARGETS, 1), logits_like(TARGETS, 2)
    label_loss = base(student, TARGETS)
    assert torch.allclose(DistillationLoss(base, base.probabilities, 4.0, 0.0)(student, TARGETS, teacher),
                          label_loss)
    assert torch.allclose(DistillationLoss(base, base.probabilities, 4.0, 0.7)(student, TARGETS), label_loss)
    assert DistillationLoss(base, base.probabilities, 4.0, 1.0)(student, TARGETS, student).abs() < 1e-5
    p, q = base.probabilities(teacher / 2.0), base.probabilities(student / 2.0)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    mixed = DistillationLoss(base, base.probabilities, 2.0, 0.6)(student, TARGETS, teacher)
    assert torch.allclose(mixed, 0.6 * 4.0 * kl + 0.4 * label_loss, atol=1e-6)


def save_run(path, **values) -> tuple[torch.nn.Module, Config]:
    """A real checkpoint of an untrained custom_cnn model, with its config embedded."""
    cfg = config(**{"Model.model_arch": "custom_cnn", "Model.pretrained": False, "Data.image_size": 32, **values})
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(path, {"model": model.state_dict(), "arch": "custom_cnn", "config": render_ini(cfg)})
    return model.eval(), cfg


def test_load_teacher_rebuilds_a_frozen_teacher_from_its_checkpoint(tmp_path):
    path = tmp_path / "teacher.pth"
    original, _ = save_run(path, **{"Loss.loss": "ordinal"})
    student_cfg = config(**{"Model.model_arch": "resnet50", "Model.pretrained": True, "Data.image_size": 32,
                            "Training.device": "cpu", "Distillation.teacher_checkpoint": str(path),
                            "Distillation.temperature": 4.0, "Distillation.alpha": 1.0})
    teacher, teacher_cfg = load_teacher(path, torch.device("cpu"), student_cfg)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher_cfg.model.model_arch == "custom_cnn" and teacher_cfg.loss.loss == "ordinal"
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(images), original(images))

    # The teacher was trained with the ordinal loss, so its soft targets are ordinal probabilities:
    # a softmax student whose softened distribution equals them has nothing left to learn.
    _, criterion = build_distillation(student_cfg, WeightedCSILoss(0.3), torch.device("cpu"))
    teacher_logits = logits_like(TARGETS)
    matching_student = 4.0 * OrdinalLoss().probabilities(teacher_logits / 4.0).log()
    assert criterion(matching_student, TARGETS, teacher_logits).abs() < 1e-5
    assert criterion(teacher_logits, TARGETS, teacher_logits) > 1e-3


@pytest.mark.parametrize(("key", "student_value", "shown"), [
    ("Data.image_size", 64, "Data.image_size = 32, this run uses 64"),
    ("Data.resize_mode", "pad", "Data.resize_mode = plain, this run uses pad"),
])
def test_load_teacher_refuses_a_teacher_trained_on_other_inputs(tmp_path, key, student_value, shown):
    path = tmp_path / "teacher.pth"
    _, teacher_cfg = save_run(path)
    student_cfg = apply_overrides(teacher_cfg, {key: student_value})
    with pytest.raises(ConfigError, match=shown):
        load_teacher(path, torch.device("cpu"), student_cfg)


def test_a_teacher_normalised_otherwise_reads_the_students_batches_in_its_own_normalisation(tmp_path):
    path = tmp_path / "teacher.pth"
    original, teacher_cfg = save_run(path, **{"Data.normalization": "custom", "Data.normalization_mean": 0.5307,
                                              "Data.normalization_std": 0.2583})
    student_cfg = apply_overrides(teacher_cfg, {"Data.normalization": "medical"})
    teacher, _ = load_teacher(path, torch.device("cpu"), student_cfg)
    pixels = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher((pixels - 0.5) / 0.25), original((pixels - 0.5307) / 0.2583))
