"""Legacy import path: `from src.evaluate import evaluate_model`; `python -m src.evaluate`."""

from src.evaluation.evaluate import evaluate_model

__all__ = ["evaluate_model"]

if __name__ == "__main__":
    from src.cli.main import main

    main(default_mode="eval")
