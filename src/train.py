"""Legacy import path: `from src.train import train_model, WeightedCSILoss`; `python -m src.train`.

The names are imported on first use, so `python -m src.train --help` answers without loading torch."""

from importlib import import_module

_HOMES = {"train_model": "src.training.trainer", "train_epoch": "src.training.trainer",
          "validate_epoch": "src.training.trainer", "WeightedCSILoss": "src.training.loss"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'src.train' has no attribute {name!r}")


if __name__ == "__main__":
    from src.cli.main import main

    main(default_mode="train")
