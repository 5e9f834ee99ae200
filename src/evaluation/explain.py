"""explain: per-zone Grad-CAM strips of any images, with their predicted scores, and an index.html."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.config.schema import Config
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.data.zones import ZONES
from src.evaluation.predict import prepare_scoring, score_dataset
from src.evaluation.saliency import write_saliency_figures
from src.reporting.html import Gallery, LinkedImage, Report, Table, Text
from src.utils.io import atomic_write_csv


def explain_images(cfg: Config, checkpoint: str | Path, source: str | Path, output_dir: str | Path) -> pd.DataFrame:
    """Write <output_dir>/<FileID>.png per usable image of `source`, predictions.csv and index.html
    (which links the PNGs); returns the predictions table."""
    out = Path(output_dir)
    model, trained_cfg, dataset, temperature = prepare_scoring(cfg, checkpoint, source)
    pred, table = score_dataset(model, trained_cfg, dataset, temperature)
    atomic_write_csv(out / "predictions.csv", table)
    paths = write_saliency_figures(model, dataset, BatchPreparer(Normalization.of(trained_cfg.data)),
                                   list(range(len(dataset))), pred.probs, out)
    shown = table[["FileID", *(f"{z}_pred" for z in ZONES), "csi_pred", "ahf_pred"]]
    report = Report(f"Grad-CAM of {len(table)} image(s)", subtitle=f"{trained_cfg.model.model_arch} · {checkpoint}")
    report.add_section("Predicted scores", Table(shown, index=False, digits=2))
    report.add_section("Where the model looked (Grad-CAM)",
                       Text("Each strip: the radiograph with each zone's predicted score, then each zone's "
                            "Grad-CAM map for its predicted class, its own cell outlined.", muted=True),
                       Gallery([LinkedImage(p.name) for p in paths]))
    report.write(out / "index.html")
    return table
