"""W&B's hyperband early termination, judged on the per-epoch metric of every run of the sweep.

At each band (an epoch number), the threshold is the value that the best 1/eta of the runs that
reached that epoch beat. A running run that has reached a band is stopped when it is worse than
the threshold of the last band it reached: strict compares its value at that band, non-strict its
best value so far (W&B's `strict`, default true). Runs of every state take part in the
thresholds, the judged run included, as on W&B's server.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial

from src.sweeps.spec import Hyperband


def _losses(values: dict[int, float], maximize: bool) -> list[float]:
    """Per-epoch values in epoch order, finite ones only, negated when larger is better."""
    history = [values[step] for step in sorted(values) if math.isfinite(values[step])]
    return [-v for v in history] if maximize else history


def thresholds(histories: list[list[float]], hyperband: Hyperband) -> list[float]:
    """The threshold at each band (inf where no run has reached it yet)."""
    result = []
    for band in hyperband.bands:
        reached = sorted(h[band - 1] for h in histories if len(h) >= band)
        result.append(reached[int(len(reached) / hyperband.eta)] if reached else math.inf)
    return result


def should_stop(history: list[float], histories: list[list[float]], hyperband: Hyperband
                ) -> tuple[bool, int | None, float | None]:
    """(stop?, band judged at, its threshold) for a run with `history` (losses, lower is better)."""
    reached = [(b, t) for b, t in zip(hyperband.bands, thresholds(histories, hyperband)) if b <= len(history)]
    if not reached:
        return False, None, None
    band, threshold = reached[-1]
    value = history[band - 1] if hyperband.strict else min(history)
    return value > threshold, band, threshold


class HyperbandPruner(optuna.pruners.BasePruner):
    """Optuna pruner applying W&B's hyperband rule to the values trials report each epoch."""

    def __init__(self, hyperband: Hyperband, maximize: bool) -> None:
        self.hyperband, self.maximize = hyperband, maximize

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        histories = [_losses(t.intermediate_values, self.maximize) for t in study.get_trials(deepcopy=False)]
        stop, _, _ = should_stop(_losses(trial.intermediate_values, self.maximize),
                                 [h for h in histories if h], self.hyperband)
        return stop
