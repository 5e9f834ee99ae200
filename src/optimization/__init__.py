"""Hyperparameter search with Optuna: search space, storage, per-trial objective and report."""

from src.optimization.objective import Objective, TrialFailed
from src.optimization.report import best_params, write_report
from src.optimization.search_space import parse_space
from src.optimization.study import open_storage, open_study

__all__ = ["Objective", "TrialFailed", "best_params", "open_storage", "open_study", "parse_space",
           "write_report"]
