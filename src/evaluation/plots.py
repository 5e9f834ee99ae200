"""PNG figures: confusion matrices, training curves and per-zone saliency strips.

Figures are drawn on matplotlib.figure.Figure, not pyplot: no backend to choose, no window, and
nothing for pyplot to keep alive, so importing this module changes no global matplotlib state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from src.data.zones import CLASS_NAMES, UNKNOWN, ZONES
from src.models.heads import GRID, ZONE_CELLS
from src.utils.io import atomic_write_with


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))


def plot_confusion_matrices(matrices: dict[str, np.ndarray], labels: Sequence[str], title: str,
                            path: Path) -> None:
    """One panel per matrix: counts, coloured by row share (recall per true class)."""
    n = len(matrices)
    cols = min(n, 3)
    rows_of_panels = -(-n // cols)
    side = 0.6 * len(labels) + 1.3
    fig = Figure(figsize=(side * cols, side * rows_of_panels), layout="constrained")
    axes = fig.subplots(rows_of_panels, cols, squeeze=False)
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


def plot_training_curves(train_history: list[dict], val_history: list[dict], path: Path,
                         marked_epoch: int | None = None) -> None:
    """Loss, macro F1 / QWK and learning rate per epoch; `marked_epoch` (the evaluated checkpoint's)
    as a dashed line."""
    epochs = [h["epoch"] for h in train_history]
    fig = Figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3)
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
        if marked_epoch is not None:
            ax.axvline(marked_epoch, color="grey", ls="--", lw=1, label=f"checkpoint (epoch {marked_epoch})")
    axes[0].legend()
    axes[1].legend()
    save_figure(fig, path)


def _draw_zone_grid(ax, shape: tuple[int, int], highlight: tuple[int, int] | None = None) -> None:
    """The six-zone grid (GRID rows x columns) over an image of `shape`; one cell outlined."""
    height, width = shape
    rows, cols = GRID
    for r in range(1, rows):
        ax.axhline(r * height / rows - 0.5, color="white", lw=0.8, alpha=0.8)
    for c in range(1, cols):
        ax.axvline(c * width / cols - 0.5, color="white", lw=0.8, alpha=0.8)
    if highlight is not None:
        r, c = highlight
        ax.add_patch(Rectangle((c * width / cols - 0.5, r * height / rows - 0.5), width / cols, height / rows,
                               fill=False, edgecolor="#ffd400", lw=2.2))


def _draw_zone_masks(ax, zones: np.ndarray, highlight: int | None = None) -> None:
    """Each zone's outline from its mask (`zones` [6, H, W]); zone `highlight`'s outlined boldly."""
    for z, mask in enumerate(zones):
        if mask.max() > 0.5:
            bold = z == highlight
            ax.contour(mask, levels=[0.5], colors="#ffd400" if bold else "white", linewidths=2.2 if bold else 0.8,
                       alpha=1 if bold else 0.8)


def _zone_centres(zones: np.ndarray | None, shape: tuple[int, int]) -> list[tuple[float, float]]:
    """(x, y) where each zone's scores are written: its mask's centroid, else its grid cell's centre."""
    height, width = shape
    rows, cols = GRID
    centres = []
    for z, zone in enumerate(ZONES):
        if zones is not None and zones[z].max() > 0.5:
            ys, xs = np.nonzero(zones[z] > 0.5)
            centres.append((float(xs.mean()), float(ys.mean())))
        else:
            r, c = ZONE_CELLS[zone]
            centres.append(((c + 0.5) * width / cols, (r + 0.5) * height / rows))
    return centres


def _score(score: int) -> str:
    return "U" if score == UNKNOWN else str(score)


def plot_zone_saliency(image: np.ndarray, maps: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None,
                       title: str, path: Path, zones: np.ndarray | None = None) -> None:
    """A strip: the radiograph with each zone's true and predicted score in its cell, then one
    panel per zone with its Grad-CAM map (`maps` [6, H, W] in [0, 1]) and its own cell outlined.
    With `zones` (the zone masks [6, H, W] of a model that reads lung masks) the zones' outlines
    are drawn instead of the grid."""
    fig = Figure(figsize=(2.1 * (1 + len(ZONES)), 2.9))
    axes = fig.subplots(1, 1 + len(ZONES))
    grey = dict(cmap="gray", vmin=float(np.percentile(image, 1)), vmax=float(np.percentile(image, 99)))

    def outline(ax, highlight: int | None = None) -> None:
        if zones is None:
            _draw_zone_grid(ax, image.shape, None if highlight is None else ZONE_CELLS[ZONES[highlight]])
        else:
            _draw_zone_masks(ax, zones, highlight)

    axes[0].imshow(image, **grey)
    outline(axes[0])
    for z, (zone, (x, y)) in enumerate(zip(ZONES, _zone_centres(zones, image.shape))):
        shown = f"pred {_score(predicted[z])}"
        if truth is not None:
            shown = f"true {_score(truth[z])}\n{shown}"
        wrong = truth is not None and truth[z] != UNKNOWN and truth[z] != predicted[z]
        axes[0].text(x, y, shown, ha="center", va="center",
                     fontsize=8.5, color="white", bbox=dict(boxstyle="round,pad=0.25", lw=0, alpha=0.75,
                                                           facecolor="#c0392b" if wrong else "#1f3b57"))
        ax = axes[1 + z]
        ax.imshow(image, **grey)
        ax.imshow(maps[z], cmap="jet", alpha=0.42, vmin=0, vmax=1)
        outline(ax, z)
        label = CLASS_NAMES[predicted[z]] + ("" if truth is None else f" (true {CLASS_NAMES[truth[z]]})")
        ax.set_title(f"{zone}\n{label}", fontsize=8.5, color="#c0392b" if wrong else "black")
    axes[0].set_title(title, fontsize=8.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4)
    save_figure(fig, path)


SCORE_COLOURS = ("#2e7d32", "#b8860b", "#d35400", "#c0392b", "#5f6b7a")  # 0-3, then Unknown


def plot_contact_sheet(images: np.ndarray, labels: np.ndarray, captions: Sequence[str], zones: np.ndarray | None,
                       value_range: tuple[float, float], title: str, path: Path) -> None:
    """A grid of model inputs (`images` [N, H, W] as normalised, shown over `value_range`), each with
    the six zones outlined (the 3x2 grid, or `zones` [N, 6, H, W] lung-mask zones) and each zone's
    label (0-3, U) in a box coloured by score."""
    n = len(images)
    columns = min(6, math.ceil(math.sqrt(n)))
    rows = -(-n // columns)
    fig = Figure(figsize=(3.1 * columns, 3.35 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(images[k], cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
        if zones is None:
            _draw_zone_grid(ax, images[k].shape)
        else:
            _draw_zone_masks(ax, zones[k])
        for z, (x, y) in enumerate(_zone_centres(None if zones is None else zones[k], images[k].shape)):
            score = int(labels[k, z])
            ax.text(x, y, _score(score), ha="center", va="center", fontsize=11, fontweight="bold", color="white",
                    bbox=dict(boxstyle="round,pad=0.3", lw=0, alpha=0.85, facecolor=SCORE_COLOURS[score]))
        ax.set_title(captions[k], fontsize=8.5)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
