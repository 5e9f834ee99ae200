"""RunState: what a training run has measured, kept in one place.

Invariants it keeps:
- `train_history` and `val_history` hold one entry per finished epoch, in order; nothing else in
  the trainer keeps a history (the JSON logs and the checkpoint are written from these lists).
- The best epoch is the last one whose monitored value beat the best before it by more than
  `min_delta` (an epoch whose value is NaN never does). best_model.pth is written exactly when it
  changes, and early stopping counts the epochs since: the two cannot disagree.
"""

from __future__ import annotations

from src.training.callbacks import EarlyStopping


class RunState:
    def __init__(self, monitor: str, mode: str, min_delta: float, patience: int) -> None:
        self.monitor = monitor
        self.train_history: list[dict] = []
        self.val_history: list[dict] = []
        # No copy of the weights here: best_model.pth holds the best epoch's.
        self._stopper = EarlyStopping(patience, min_delta, mode, restore_best_weights=False)

    def record(self, train_metrics: dict, val_metrics: dict) -> bool:
        """Add a finished epoch; True when it is the new best."""
        self.train_history.append(train_metrics)
        self.val_history.append(val_metrics)
        epoch = val_metrics["epoch"]
        self._stopper.step(val_metrics[self.monitor], epoch)
        return self._stopper.best_epoch == epoch

    @property
    def best_epoch(self) -> int | None:
        """None while the monitored value has never been defined."""
        return self._stopper.best_epoch if self._stopper.best_epoch > 0 else None

    @property
    def epochs_without_improvement(self) -> int:
        return self._stopper.bad_epochs

    @property
    def should_stop(self) -> bool:
        return 0 < self._stopper.patience <= self._stopper.bad_epochs

    def best_metrics(self) -> dict:
        """Validation metrics of the best epoch (of the last one while there is no best)."""
        epoch = self.best_epoch or self.val_history[-1]["epoch"]
        return next(h for h in self.val_history if h["epoch"] == epoch)

    def state_dict(self) -> dict:
        stopper = self._stopper.state_dict()
        return {"train_history": self.train_history, "val_history": self.val_history,
                "best": stopper["best"], "best_epoch": stopper["best_epoch"], "bad_epochs": stopper["bad_epochs"]}

    def load_state_dict(self, state: dict) -> None:
        self.train_history, self.val_history = list(state["train_history"]), list(state["val_history"])
        self._stopper.load_state_dict({**state, "best_state": None})
