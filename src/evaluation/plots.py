"""PNG figures: confusion matrices and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from src.utils.io import atomic_write_with  # noqa: E402


def save_figure(fig, path: Path) -> None:
    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_confusion_matrices(matrices: dict[str, np.ndarray], labels: Sequence[str], title: str,
                            path: Path) -> None:
    """One panel per matrix: counts, coloured by row share (recall per true class)."""
    n = len(matrices)
    cols = min(n, 3)
    rows_of_panels = -(-n // cols)
    side = 0.9 * len(labels) + 1.6
    fig, axes = plt.subplots(rows_of_panels, cols, figsize=(side * cols, side * rows_of_panels), squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_training_curves(train_history: list[dict], val_history: list[dict], path: Path) -> None:
    """Loss, macro F1 / QWK and learning rate per epoch."""
    epochs = [h["epoch"] for h in train_history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(epochs, [h["train_loss"] for h in train_history], label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in val_history], label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [h["train_f1_macro"] for h in train_history], label="train macro F1")
    axes[1].plot(epochs, [h["val_f1_macro"] for h in val_history], label="val macro F1")
    axes[1].plot(epochs, [h["val_qwk"] for h in val_history], label="val QWK")
    axes[1].set_title("known-zone scores")
    axes[2].plot(epochs, [h["lr"] for h in train_history])
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    save_figure(fig, path)
