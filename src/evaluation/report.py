"""report.html of an evaluation: one section per builder of EVAL_SECTIONS, in that order.

A builder takes the EvaluationRun (everything eval computed and wrote) and adds its section(s)
to the Report, or nothing when it has nothing to show. To add a section, write a builder and
list it in EVAL_SECTIONS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.config.loader import config_from_text
from src.config.schema import Config
from src.data.load import DataBundle
from src.data.summary import label_counts, split_counts
from src.data.zones import ZONES
from src.reporting.html import Gallery, Heading, Image, KeyFigures, KeyValues, Report, Row, Table, Text
from src.training.loop import Predictions


@dataclass
class EvaluationRun:
    """What one evaluation computed and wrote; the input of every report section."""

    cfg: Config  # the config the model was trained with (runtime keys of today's)
    checkpoint: Path
    state: dict  # the checkpoint (epoch, arch, metrics, ...)
    data: DataBundle
    predictions: dict[str, Predictions]  # per split
    metrics: dict[str, dict[str, float]]  # per split, as in metrics.json
    out_dir: Path  # <run>/evaluation
    figures: dict[str, list[Path]] = field(default_factory=dict)  # kind -> PNGs written (see evaluate.py)


# The figures a reader looks for first, shown as tiles: metric key -> label.
HEADLINE = {"f1_macro": "macro F1", "qwk": "quadratic-weighted kappa", "csi_mae": "CSI MAE",
            "ahf_accuracy": "AHF class accuracy"}


def summary_section(run: EvaluationRun, report: Report) -> None:
    cfg, table = run.cfg, run.data.table
    trained = config_from_text(run.state["config"], f"{run.checkpoint} (embedded config)")  # as it was trained
    settings = {
        "model": f"{cfg.model.model_arch}{', from ImageNet weights' if trained.model.pretrained else ''}, "
                 f"zone pooling {cfg.model.zone_pooling}, dropout {cfg.model.dropout}",
        "images": f"{cfg.data.image_size} px, resize {cfg.data.resize_mode}, normalization {cfg.data.normalization}",
        "training": f"{cfg.training.n_epochs} epochs max, batch {cfg.training.batch_size}, "
                    f"{cfg.optimization.optimizer} lr {cfg.training.learning_rate:g}, {cfg.optimization.scheduler} "
                    f"schedule, loss {cfg.loss.loss}, seed {cfg.training.seed}",
        "checkpoint": f"{run.checkpoint} (epoch {run.state.get('epoch')})",
        "AHF classes": f"low: CSI ≤ {cfg.evaluation.ahf_low_threshold}, "
                       f"high: CSI > {cfg.evaluation.ahf_high_threshold}",
        "labels": f"{cfg.data.labels_csv}: {len(table)} usable images, {len(run.data.skipped)} skipped",
    }
    split = "test" if "test" in run.metrics else next(iter(run.metrics))
    headline = {label: f"{run.metrics[split][key]:.3f}" for key, label in HEADLINE.items() if key in run.metrics[split]}
    note = f"{split} split, {len(run.predictions[split].file_ids)} images"
    report.add_section("Summary", KeyFigures(headline, {label: note for label in headline}), KeyValues(settings),
                       Table(split_counts(table), "Images per split", digits=2),
                       Table(label_counts(table), "Zone scores (all splits)", digits=1))


def metrics_section(run: EvaluationRun, report: Report) -> None:
    """Headline metrics per split, then the per-zone ones (metric keys ending in a zone's name)."""
    per_zone = {split: {k: v for k, v in m.items() if k.endswith(ZONES)} for split, m in run.metrics.items()}
    overall = pd.DataFrame({split: {k: v for k, v in m.items() if k not in per_zone[split]}
                            for split, m in run.metrics.items()})
    blocks = [Text("Score metrics count known zones only (Unknown targets are excluded); QWK is the "
                   "quadratic-weighted kappa of the ordinal 0-3 scores; CSI is the mean of an image's "
                   "known zones.", muted=True), Table(overall, "Overall")]
    tables = [Table(pd.DataFrame({zone: {k.removesuffix(f"_{zone}"): v for k, v in values.items() if k.endswith(zone)}
                                  for zone in ZONES}).T, f"Per zone, {split}")
              for split, values in per_zone.items()]
    report.add_section("Metrics", *blocks, Row(tables))


def confusion_section(run: EvaluationRun, report: Report) -> None:
    """Per split: the six zones' matrices, then all zones and the AHF class side by side."""
    paths = run.figures.get("confusion", [])
    if not paths:
        return
    blocks: list = [Text("Counts; colour is the share of the true class's row (its recall).", muted=True)]
    for split in run.metrics:
        zones, *others = [p for p in paths if p.stem.endswith(f"_{split}")]
        blocks += [Heading(split), Image.from_file(zones), Row([Image.from_file(p) for p in others])]
    report.add_section("Confusion matrices", *blocks)


def training_curves_section(run: EvaluationRun, report: Report) -> None:
    paths = run.figures.get("training_curves", [])
    if paths:
        report.add_section("Training curves", *(Image.from_file(p) for p in paths))


def saliency_section(run: EvaluationRun, report: Report) -> None:
    paths = run.figures.get("saliency", [])
    if not paths:
        return
    intro = Text("Grad-CAM of each zone's predicted class on test images: first those with the largest "
                 "CSI error, then a fixed random sample. The first panel shows each zone's true and "
                 "predicted score (0-3; U: Unknown; red: wrong); each other panel is one zone's map, red "
                 "where the evidence for its predicted score lies, its own cell outlined in yellow.",
                 muted=True)
    report.add_section("Where the model looked (Grad-CAM)", intro,
                       Gallery([Image.from_file(p) for p in paths]))


EVAL_SECTIONS: tuple[Callable[[EvaluationRun, Report], None], ...] = (
    summary_section,
    metrics_section,
    confusion_section,
    training_curves_section,
    saliency_section,
)


def write_evaluation_report(run: EvaluationRun) -> Path:
    """<out_dir>/report.html with every section of EVAL_SECTIONS."""
    report = Report(f"Evaluation: {run.checkpoint.parent.name}",
                    subtitle=f"{run.cfg.model.model_arch} · checkpoint {run.checkpoint.name} · "
                             f"splits {', '.join(run.metrics)}")
    for build in EVAL_SECTIONS:
        build(run, report)
    return report.write(run.out_dir / "report.html")
