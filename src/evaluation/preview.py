"""See the data as the model sees it: a contact sheet of images after decoding and preprocessing,
exactly the tensors the model reads (CSIDataset's batch made the model's input by BatchPreparer, no
augmentation), with the six zones outlined and each zone's label. What to look at before a long run,
and first of all on a new site's data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from src.data.dataset import CSIDataset
from src.data.load import DataBundle
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.data.zones import ZONES
from src.evaluation.plots import plot_contact_sheet


def write_preview(bundle: DataBundle, normalization: Normalization, count: int, seed: int, path: str | Path,
                  source: str = "") -> Path:
    """A contact sheet PNG of `count` images of `bundle` drawn with `seed` (in table order), normalised
    with `normalization`."""
    table = bundle.table
    chosen = np.sort(np.random.default_rng(seed).choice(len(table), size=min(count, len(table)), replace=False))
    rows = table.iloc[chosen]
    dataset = CSIDataset(bundle.cache.images, rows["cache_index"].to_numpy(), rows[list(ZONES)].to_numpy(),
                         rows["FileID"].tolist(), bundle.zones)
    stored, labels, file_ids = dataset.__getitems__(list(range(len(rows))))
    inputs = BatchPreparer(normalization)(stored, labels, torch.device("cpu"))[0].numpy()
    captions = [f"{file_id} · {split} · CSI {csi:.2f}" if csi == csi else f"{file_id} · {split} · CSI —"
                for file_id, split, csi in zip(file_ids, rows["split"], rows["csi"])]
    zones = inputs[:, 1:] if inputs.shape[1] > 1 else None
    low, high = normalization(0.0), normalization(1.0)  # the cache's 0..1, normalised
    size = inputs.shape[-1]
    title = (f"{source + ': ' if source else ''}{len(rows)} of {len(table)} images as the model receives them\n"
             f"{size}x{size} px, normalised (x - {normalization.mean:.3g}) / {normalization.std:.3g}, no augmentation; "
             f"{'lung-mask zones' if zones is not None else 'the 3x2 zone grid'}; labels 0-3, U: Unknown")
    plot_contact_sheet(inputs[:, 0], labels.numpy(), captions, zones, (low, high), title, Path(path))
    return Path(path)
