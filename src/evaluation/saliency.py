"""Grad-CAM per lung zone (pytorch-grad-cam): where the model looked to give each zone its score.

Each zone has its own classifier, so each zone gets its own map: Grad-CAM of that zone's
predicted-class logit at the backbone's last spatial layer. For CNNs that is the backbone's last
block; for the ViTs (vit_b_16, raddino, hf:) it is the last encoder block, whose patch tokens are
laid back on their grid (class and register tokens have no position and are dropped). Maps are
scaled to [0, 1] per image and zone and resized to the input, as the library does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from src.data.dataset import CSIDataset
from src.data.prepare import BatchPreparer
from src.data.zones import ZONES, csi_from_scores
from src.engine.metrics import predicted_csi
from src.engine.predict import Predictions
from src.evaluation.plots import plot_zone_saliency
from src.models.factory import CSIModel
from src.utils.logging import logger


class ZoneClassTarget:
    """The logit of class `score` of zone `zone`, from one image's [6, classes] output."""

    def __init__(self, zone: int, score: int) -> None:
        self.zone, self.score = zone, score

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[self.zone, self.score]


def cam_layer(model: CSIModel, image_size: tuple[int, int]) -> tuple[nn.Module, Callable | None]:
    """The layer Grad-CAM weighs for `model`, and the transform that lays its output on a grid.

    Transformers name theirs (cam_target: the last encoder block); the CNNs built as a Sequential
    of stages use the last stage; any other backbone (timm's) its own output, the feature map."""
    backbone = model.backbone
    if hasattr(backbone, "cam_target"):
        return backbone.cam_target(image_size)
    if isinstance(backbone, nn.Sequential):
        return backbone[-1], None
    return backbone, None


def grid_misalignment(model: CSIModel, image: torch.Tensor) -> tuple[float, float]:
    """How far (rows, columns of input pixels) the backbone's feature cells are centred from where
    resizing the map to the image puts them.

    A cell's centre is the centroid of its input gradient. Convolutions of stride 2 padded by k//2
    centre cell j on pixel stride*j, half a cell above and left of resizing's stride*(j + 1/2) - 1/2:
    16 px for custom_cnn and resnet50, about nothing for densenet121 (its average pools shift back).
    """
    pixels = image[None, :1].detach().float().requires_grad_(True)
    with torch.enable_grad():
        features = model.backbone(pixels)
        (h, w), (height, width) = features.shape[-2:], pixels.shape[-2:]
        gradient = torch.autograd.grad(features[0, :, h // 2, w // 2].sum(), pixels)[0][0, 0].abs()
    centre_row = float((gradient.sum(1) * torch.arange(height, device=gradient.device)).sum() / gradient.sum())
    centre_col = float((gradient.sum(0) * torch.arange(width, device=gradient.device)).sum() / gradient.sum())
    return (centre_row - (height / h * (h // 2 + 0.5) - 0.5), centre_col - (width / w * (w // 2 + 0.5) - 0.5))


def zone_cams(model: CSIModel, images: torch.Tensor, scores: np.ndarray) -> np.ndarray:
    """Grad-CAM maps [B, 6, H, W] in [0, 1] of each zone's class `scores[b, zone]` for `images`
    [B, 1, H, W] (on the model's device), placed where the backbone's cells look."""
    # Imported here: pytorch_grad_cam loads torchvision, scikit-learn and OpenCV, several seconds of
    # start-up that predict, train and the other modes importing this module never use.
    from pytorch_grad_cam import GradCAM

    layer, reshape = cam_layer(model, tuple(images.shape[-2:]))
    maps = np.zeros((len(images), len(ZONES), *images.shape[-2:]), dtype=np.float32)
    with torch.enable_grad(), GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        for z in range(len(ZONES)):
            targets = [ZoneClassTarget(z, int(s)) for s in scores[:, z]]
            maps[:, z] = cam(input_tensor=images.float(), targets=targets)
    # ViT patches (a transformer's cam_target, timm's patch grid) are exactly the cells resizing assumes;
    # CNN cells may not be. A timm ViT's cell sums to a constant over its channels (its last LayerNorm):
    # measuring it found only rounding noise, a shift that changed with the thread count.
    if reshape is None and not getattr(model.backbone, "patch_size", None):
        rows, cols = grid_misalignment(model, images[0])
        maps = ndimage.shift(maps, (0, 0, rows, cols), order=1, mode="nearest")
    return maps


def saliency_rows(true_csi: np.ndarray, pred_csi: np.ndarray, largest: int, random: int,
                  seed: int) -> list[tuple[int, str]]:
    """Rows to explain: the `largest` CSI errors (largest first), then `random` other rows drawn
    with `seed`; each with the reason it was chosen."""
    error = np.abs(pred_csi - true_csi)
    defined = np.flatnonzero(~np.isnan(error))
    worst = defined[np.argsort(-error[defined], kind="stable")][:largest]
    rest = np.setdiff1d(np.arange(len(true_csi)), worst)
    drawn = np.random.default_rng(seed).choice(rest, size=min(random, len(rest)), replace=False)
    return [(int(i), "largest CSI error") for i in worst] + [(int(i), "random sample") for i in np.sort(drawn)]


def explain_selected_images(model: CSIModel, dataset: CSIDataset, prepare: BatchPreparer, pred: Predictions,
                            largest: int, random: int, seed: int, out_dir: Path) -> list[Path]:
    """Grad-CAM strips of the `largest` CSI errors of `pred` (over `dataset`, made model inputs by
    `prepare`) and of `random` other images drawn with `seed`."""
    chosen = saliency_rows(csi_from_scores(pred.targets), predicted_csi(pred.probs.argmax(-1), pred.probs),
                           largest, random, seed)
    rows = [row for row, _ in chosen]
    return write_saliency_figures(model, dataset, prepare, rows, pred.probs[rows], out_dir,
                                  [why for _, why in chosen])


def write_saliency_figures(model: CSIModel, dataset: CSIDataset, prepare: BatchPreparer, rows: Sequence[int],
                           probs: np.ndarray, out_dir: Path, captions: Sequence[str] = (),
                           batch_size: int = 16) -> list[Path]:
    """One PNG per dataset row in `rows`: the radiograph with the six-zone grid and each zone's
    Grad-CAM for its predicted class. `probs` [len(rows), 6, classes] are the rows' predictions;
    the dataset's labels are shown as the truth where any zone is known. `prepare` makes the rows
    the model's input, on the model's device, as in prediction."""
    if model.head.pooling == "passes":
        logger.warning(f"no Grad-CAM figures for [Model] zone_focus = {model.focus}: its six backbone passes have "
                       "no one feature map to explain")
        return []
    device = next(model.parameters()).device
    model.eval()
    paths = []
    for start in tqdm(range(0, len(rows), batch_size), desc="saliency", unit="batch", leave=False):
        batch = list(rows[start:start + batch_size])
        stored, labels, file_ids = dataset.__getitems__(batch)
        images, _ = prepare(stored, labels, device)
        batch_probs = probs[start:start + len(batch)]
        scores = batch_probs.argmax(-1)
        maps = zone_cams(model, images, scores)
        pred_csi = predicted_csi(scores, batch_probs)
        for k, file_id in enumerate(file_ids):
            truth = labels[k].numpy()
            true_csi = csi_from_scores(truth)
            title = f"{file_id}" + (f" · {captions[start + k]}" if captions else "") + f"\nCSI pred {pred_csi[k]:.2f}"
            if not np.isnan(true_csi):
                title += f", true {true_csi:.2f}"
            path = out_dir / f"{file_id}.png"
            plot_zone_saliency(images[k, 0].cpu().numpy(), maps[k], scores[k],
                               None if np.isnan(true_csi) else truth, title, path,
                               images[k, 1:].cpu().numpy() if images.shape[1] > 1 else None)
            paths.append(path)
    return paths
