"""The evaluation figures are drawn without pyplot: importing them picks no backend for the caller."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

DRAW = """
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use = lambda *args, **kwargs: sys.exit("matplotlib.use called")
from src.evaluation.plots import plot_confusion_matrices, plot_training_curves
from src.evaluation.stat_plots import plot_agreement  # noqa: F401

out = Path(sys.argv[1])
history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_f1_macro": 0.1 * e,
            "val_f1_macro": 0.1 * e, "val_qwk": 0.2 * e, "lr": 1e-3} for e in (1, 2)]
plot_training_curves(history, history, out / "curves.png", marked_epoch=2)
plot_confusion_matrices({"zone": np.eye(3, dtype=int)}, ["a", "b", "c"], "t", out / "confusion.png")
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
"""


def test_figures_are_drawn_without_pyplot_or_choosing_a_backend(tmp_path):
    result = subprocess.run([sys.executable, "-c", DRAW, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
