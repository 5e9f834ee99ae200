"""Legacy import path: `from src.training.metrics import compute_f1_metrics, ...` (the metrics live in
src/engine/metrics.py, below training and evaluation alike)."""

from src.engine.metrics import *  # noqa: F403
