"""Knowledge distillation: the configured (student) model also learns a trained teacher's soft targets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.config.schema import Config
from src.data.preprocess import normalization_stats
from src.engine.probabilities import probabilities_for
from src.models.factory import load_trained_model
from src.training.loss import WeightedCSILoss
from src.utils.errors import ConfigError


def _input_preparation(cfg: Config) -> dict[str, tuple[object, str]]:
    """What decides the pixels a model sees before normalisation: key -> (value to compare, how to show it)."""
    d = cfg.data
    return {
        "Data.image_size": (d.image_size, str(d.image_size)),
        "Data.resize_mode": (d.resize_mode, d.resize_mode),
        "Data.clip_low_percentile": (d.clip_low_percentile, f"{d.clip_low_percentile:g}"),
        "Data.clip_high_percentile": (d.clip_high_percentile, f"{d.clip_high_percentile:g}"),
    }


def _stats(cfg: Config) -> tuple[float, float]:
    d = cfg.data
    return normalization_stats(d.normalization, d.normalization_mean, d.normalization_std)


class Renormalized(nn.Module):
    """`model` reading images normalised with the student's (mean, std) as if normalised with its own:
    (x * s_std + s_mean - t_mean) / t_std, so a RAD-DINO teacher and a custom_cnn student each see
    the input their weights expect. Zone masks after the image channel (src/data/dataset.py) pass as they are."""

    def __init__(self, model: nn.Module, student: tuple[float, float], teacher: tuple[float, float]) -> None:
        super().__init__()
        self.model = model
        self.scale, self.shift = student[1] / teacher[1], (student[0] - teacher[0]) / teacher[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x[:, :1] * self.scale + self.shift, x[:, 1:]], dim=1))


def load_teacher(path: str | Path, device: torch.device, student_cfg: Config) -> tuple[nn.Module, Config]:
    """The frozen teacher model of checkpoint `path` on `device`, and the config it was trained with.

    The teacher may have any architecture, loss and input normalisation (its own is applied to the
    student's batches), but sees the student's pixels, so they must have been prepared identically.
    """
    teacher, teacher_cfg, _ = load_trained_model(student_cfg, Path(path))
    theirs, ours = _input_preparation(teacher_cfg), _input_preparation(student_cfg)
    for key, (value, shown) in theirs.items():
        if value != ours[key][0]:
            raise ConfigError(
                f"[Distillation] teacher_checkpoint = {path}: the teacher was trained with {key} = {shown}, "
                f"this run uses {ours[key][1]}; distil only from a teacher trained on the same input preparation"
            )
    if _stats(teacher_cfg) != _stats(student_cfg):
        teacher = Renormalized(teacher, _stats(student_cfg), _stats(teacher_cfg))
    teacher.to(device).eval().requires_grad_(False)
    return teacher, teacher_cfg


class DistillationLoss(nn.Module):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * base(student_logits, targets).

    X_T are each model's class probabilities of logits / T (softmax(logits / T) for the softmax
    losses), so the teacher may be trained with another loss than the student. The KL divergence
    is summed over the 5 classes and averaged over zones; T^2 keeps its gradient on the scale of
    the label loss. Without teacher logits (validation) the loss is the label loss alone, which
    keeps val_loss comparable with runs trained without a teacher.
    """

    def __init__(self, base_criterion: WeightedCSILoss, teacher_probs_fn: Callable[[torch.Tensor], torch.Tensor],
                 temperature: float = 4.0, alpha: float = 0.7) -> None:
        super().__init__()
        self.base = base_criterion
        self.teacher_probs_fn = teacher_probs_fn
        self.temperature = temperature
        self.alpha = alpha

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.base.probabilities(logits)

    def forward(self, student_logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        label_loss = self.base(student_logits, targets)
        if teacher_logits is None:
            return label_loss
        t = self.temperature
        teacher = self.teacher_probs_fn(teacher_logits.detach().float() / t)
        student_log = self.base.log_probabilities(student_logits.float() / t)
        kl = F.kl_div(student_log, teacher, reduction="none").sum(dim=-1).mean()
        return self.alpha * t * t * kl + (1 - self.alpha) * label_loss


def build_distillation(cfg: Config, base_criterion: WeightedCSILoss,
                       device: torch.device) -> tuple[nn.Module, DistillationLoss]:
    """The teacher of [Distillation] teacher_checkpoint and the criterion training against it."""
    d = cfg.distillation
    teacher, teacher_cfg = load_teacher(d.teacher_checkpoint, device, cfg)
    return teacher, DistillationLoss(base_criterion, probabilities_for(teacher_cfg.loss.loss), d.temperature,
                                     d.alpha)
