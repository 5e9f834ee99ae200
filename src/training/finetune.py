"""What a run's fine-tuning recipe makes of each epoch: which weights are frozen ([Model] freeze until
[Training] unfreeze_epoch) and whether the zone heads train on cached features ([Training] feature_cache).

The optimizer holds what the run trains at any epoch: the unfrozen weights, and with unfreeze_epoch also
those it unfreezes later (frozen until then, they get no gradient, so no step moves them).
"""

from __future__ import annotations

from src.config.schema import Config
from src.data.augment import BatchAugmenter
from src.models.factory import CSIModel
from src.models.freeze import freeze
from src.training.feature_cache import uses_feature_cache
from src.utils.logging import logger


def heads_only(cfg: Config) -> bool:
    """Whether every epoch trains the heads on cached features, so that the backbone never trains."""
    return uses_feature_cache(cfg) and not cfg.training.unfreeze_epoch


class FreezeSchedule:
    """Freezes `model` for the optimizer now (what the run trains at some epoch) and per epoch after;
    `says`: this process logs (rank 0 of a distributed run)."""

    def __init__(self, cfg: Config, model: CSIModel, says: bool = True) -> None:
        self.model, self.spec, self.unfreeze_epoch = model, cfg.model.freeze, cfg.training.unfreeze_epoch
        self.cached, self.says = uses_feature_cache(cfg), says
        self.current = "none" if self.unfreeze_epoch else self.spec
        freeze(model, self.current)
        if says and self.unfreeze_epoch and self.spec == "none":  # searchable alone, so not refused: said
            logger.warning(f"[Training] unfreeze_epoch = {self.unfreeze_epoch} has nothing to unfreeze: [Model] "
                           "freeze = none")
        if says and self.cached and BatchAugmenter(cfg.augmentation, 0.0, 1.0).active:
            logger.warning("[Augmentation] changes pixels, which the cached features of the frozen backbone cannot "
                           "follow: the heads train on unaugmented images; set [Training] feature_cache = false to "
                           "augment (running the backbone every step) or [Augmentation] enabled = false")

    def frozen_at(self, epoch: int) -> str:
        """The freeze spec in force at `epoch`."""
        return self.spec if not self.unfreeze_epoch or epoch < self.unfreeze_epoch else "none"

    def reads_features(self, epoch: int) -> bool:
        """Whether `epoch` trains the heads on cached features."""
        return self.cached and self.frozen_at(epoch) == "backbone"

    def start(self, epoch: int) -> bool:
        """Freeze what `epoch` freezes; True when that changes what trains (a distributed model is
        wrapped again then: DistributedDataParallel syncs the gradients of the weights it was given)."""
        spec = self.frozen_at(epoch)
        if spec == self.current:
            return False
        if spec == "none" and self.unfreeze_epoch and self.says:
            logger.info(f"epoch {epoch}: [Training] unfreeze_epoch = {self.unfreeze_epoch}, the whole model trains")
        freeze(self.model, spec)
        self.current = spec
        return True
