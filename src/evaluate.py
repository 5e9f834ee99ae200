"""Legacy import path: `from src.evaluate import evaluate_model`; `python -m src.evaluate`.

The name is imported on first use, so `python -m src.evaluate --help` answers without loading torch."""

from importlib import import_module

_HOMES = {"evaluate_model": "src.evaluation.evaluate"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'src.evaluate' has no attribute {name!r}")


if __name__ == "__main__":
    from src.cli.main import main

    main(default_mode="eval")
