"""Legacy import path: `from src.train import train_model, WeightedCSILoss`; `python -m src.train`."""

from src.training.loss import WeightedCSILoss
from src.training.trainer import train_epoch, train_model, validate_epoch

__all__ = ["train_model", "train_epoch", "validate_epoch", "WeightedCSILoss"]

if __name__ == "__main__":
    from src.cli.main import main

    main(default_mode="train")
