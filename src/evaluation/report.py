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
from src.data.preprocess import Normalization
from src.data.summary import label_counts, split_counts
from src.data.zones import ZONES
from src.engine.metrics import HEADLINE_METRICS
from src.engine.predict import Predictions
from src.evaluation.analysis import SplitAnalysis
from src.evaluation.outcomes import OutcomeAnalysis
from src.evaluation.reader_study import STUDY_METRICS, ReaderStudy
from src.evaluation.sites import SiteComparison
from src.reporting.html import Gallery, Heading, Image, KeyFigures, KeyValues, Report, Row, Table, Text


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
    analyses: dict[str, SplitAnalysis] = field(default_factory=dict)  # per split: intervals, agreement, calibration
    calibration: dict[str, float | str] | None = None  # temperature fitted on val (and its tta), as stored
    studied: str = ""  # the split the reader study and the outcome analysis are of
    readers: ReaderStudy | None = None  # several readers' labels: each against the others, the model in their range
    outcome: OutcomeAnalysis | None = None  # [Evaluation] outcome_column: AUROC and operating points of the CSI
    site: SiteComparison | None = None  # eval --labels: the external set beside the internal test split
    title: str = ""  # the report's title (default: the run's)


# The figures a reader looks for first, shown as tiles: metric key -> label.
HEADLINE = {"f1_macro": "macro F1", "qwk": "quadratic-weighted kappa", "csi_mae": "CSI MAE",
            "ahf_accuracy": "AHF class accuracy"}


def summary_section(run: EvaluationRun, report: Report) -> None:
    cfg, table = run.cfg, run.data.table
    normalization = Normalization.of(cfg.data)
    trained = config_from_text(run.state["config"], f"{run.checkpoint} (embedded config)")  # as it was trained
    settings = {
        "model": f"{cfg.model.model_arch}{', from its pretrained weights' if trained.model.pretrained else ''}, "
                 f"zone pooling {cfg.model.zone_pooling}, dropout {cfg.model.dropout}",
        "images": f"{cfg.data.image_size} px, resize {cfg.data.resize_mode}, normalised with mean "
                  f"{normalization.mean:.4g}, std {normalization.std:.4g}",
        "training": f"{cfg.training.n_epochs} epochs max, batch {cfg.training.batch_size}, "
                    f"{cfg.optimization.optimizer} lr {cfg.training.learning_rate:g}, {cfg.optimization.scheduler} "
                    f"schedule, loss {cfg.loss.loss}, seed {cfg.training.seed}",
        "checkpoint": f"{run.checkpoint} (epoch {run.state.get('epoch')})",
        "AHF classes": f"low: CSI ≤ {cfg.evaluation.ahf_low_threshold}, "
                       f"high: CSI > {cfg.evaluation.ahf_high_threshold}",
        "labels": f"{cfg.data.labels_csv}: {len(table)} usable images, {len(run.data.skipped)} skipped",
    }
    split = run.site.external if run.site else "test" if "test" in run.metrics else next(iter(run.metrics))
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


def intervals_section(run: EvaluationRun, report: Report) -> None:
    """The headline metrics with their 95% bootstrap intervals, one column per split."""
    if not run.analyses:
        return
    cells = {split: {name: f"{run.metrics[split][name]:.3f} [{a.intervals[name][0]:.3f}, {a.intervals[name][1]:.3f}]"
                     for name in HEADLINE_METRICS} for split, a in run.analyses.items()}
    resampled = "; ".join(f"{split}: {a.n_units} {a.units}" for split, a in run.analyses.items())
    settings = run.cfg.evaluation
    report.add_section("Confidence intervals", Text(
        f"95% percentile intervals from {settings.bootstrap_samples} bootstrap resamples (seed "
        f"{settings.bootstrap_seed}) of whole patients where PatientID is known, else of images ({resampled}). "
        "Every metric's interval is in metrics.json (metrics_ci95).", muted=True),
        Table(pd.DataFrame(cells), "Value [95% CI]"))


def agreement_section(run: EvaluationRun, report: Report) -> None:
    """Bland-Altman limits and ICC(2,1) of predicted against true CSI, per split, and the test split's plot."""
    if not run.analyses:
        return
    rows = {}
    for split, a in run.analyses.items():
        ba, icc = a.bland_altman, a.icc
        rows[split] = {"images": int(ba["n"]),
                       "ICC(2,1) [95% CI]": f"{icc['icc']:.3f} [{icc['ci_low']:.3f}, {icc['ci_high']:.3f}]",
                       "bias [95% CI]": f"{ba['bias']:+.3f} [{ba['bias_ci_low']:+.3f}, {ba['bias_ci_high']:+.3f}]",
                       "lower limit [95% CI]": f"{ba['loa_low']:+.3f} [{ba['loa_low_ci_low']:+.3f}, "
                                               f"{ba['loa_low_ci_high']:+.3f}]",
                       "upper limit [95% CI]": f"{ba['loa_high']:+.3f} [{ba['loa_high_ci_low']:+.3f}, "
                                               f"{ba['loa_high_ci_high']:+.3f}]"}
    intro = Text("Predicted minus true CSI per image (Bland-Altman): bias and 95% limits of agreement, with "
                 "the limits' confidence intervals of Bland & Altman (1999); intraclass correlation ICC(2,1), "
                 "two-way random, absolute agreement, with its F-based interval (McGraw & Wong 1996).", muted=True)
    images = [Image.from_file(p) for p in run.figures.get("statistics", []) if p.name.startswith("agreement_")]
    report.add_section("Agreement of the CSI", intro, Table(pd.DataFrame(rows).T, "Agreement"), *images)


def calibration_section(run: EvaluationRun, report: Report) -> None:
    """ECE and Brier before and after temperature scaling, per scope and split, and the reliability diagram."""
    if not run.analyses:
        return
    frames = []
    for split, a in run.analyses.items():
        frame = pd.DataFrame(a.calibration).T[["zones", "ece_before", "ece_after", "brier_before", "brier_after"]]
        frames.append(Table(frame.astype({"zones": int}), f"{split}"))
    temperature = run.calibration["temperature"] if run.calibration else None
    fitted = (f"Temperature T = {temperature:.3f} fitted on the validation split (its NLL "
              f"{run.calibration['val_nll_before']:.3f} → {run.calibration['val_nll_after']:.3f}) and stored in the "
              "checkpoint; predict applies it with [Evaluation] calibrate = true." if temperature is not None else
              "No validation split: no temperature fitted.")
    intro = Text("Over zones with a known target, probabilities renormalised over the scores 0-3; confidence "
                 "is the largest of them. ECE: 10 equal-width confidence bins. " + fitted, muted=True)
    images = [Image.from_file(p) for p in run.figures.get("statistics", []) if p.name.startswith("calibration_")]
    report.add_section("Calibration", intro, *frames, *images)


def _ci(value: float, low: float, high: float, sign: str = "") -> str:
    return f"{value:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def _p(p: float) -> str:
    return "—" if p != p else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _difference_columns(frame: pd.DataFrame, label: str) -> dict[str, list[str]]:
    """A difference with its CI (columns difference, ci_low, ci_high) and its p (p_value), formatted."""
    return {label: [_ci(r.difference, r.ci_low, r.ci_high, "+") for r in frame.itertuples()],
            "p": [_p(p) for p in frame["p_value"]]}


def site_section(run: EvaluationRun, report: Report) -> None:
    """The external set beside the internal test split: differences with unpaired CIs, calibration at both."""
    site = run.site
    if site is None:
        return
    blocks: list = [Text(f"{site.external} is an external set: each headline metric beside the model's internal "
                         f"{site.internal} split, and the difference (external − internal) with its 95% unpaired "
                         "bootstrap interval (each site's own patients resampled) and p. Calibration: ECE and Brier "
                         "over known zones, before and after the temperature stored with the checkpoint.", muted=True)]
    if not site.differences.empty:
        rows = site.differences.set_index("metric")
        blocks.append(Table(pd.DataFrame({
            f"internal {site.internal}": rows["internal"], site.external: rows["external"],
            **_difference_columns(rows, "difference [95% CI]")}, index=rows.index), "Headline metrics at both sites"))
    if not site.calibration.empty:
        caption = ("Calibration at both sites" + (f" (T = {site.temperature:.3f})" if site.temperature else ""))
        blocks.append(Table(site.calibration.astype({"zones": int}), caption))
    blocks += [Text(note, muted=True) for note in site.notes]
    report.add_section("External validation", *blocks)


def readers_section(run: EvaluationRun, report: Report) -> None:
    """Each reader against the consensus of the others, the model against the same, and the range table."""
    study = run.readers
    if study is None:
        return
    intro = Text(f"{run.studied}: each reader is scored against the consensus ({study.rule}) of the other readers "
                 "(leave-one-out), and the model against that same consensus on the same images. QWK and CSI MAE with "
                 f"95% bootstrap intervals ({study.resampled} resampled), CSI ICC(2,1) with its F-based interval; "
                 "model − reader is paired (the same resamples).", muted=True)
    ranges = study.range.rename(columns={
        "readers_min": "readers: lowest", "readers_max": "readers: highest", "model_mean": "model: mean",
        "model_min": "model: lowest", "model_max": "model: highest",
        "model_better_than_left_out": "model better than the reader left out"})
    ranges = ranges.astype({c: float for c in ranges.columns if c.startswith(("readers:", "model:"))})
    cells = {}
    for row in study.scores.itertuples():
        cells[(row.reference, row.who)] = {"images": row.images, **{
            label: _ci(getattr(row, m), getattr(row, f"{m}_ci_low"), getattr(row, f"{m}_ci_high"))
            for m, (label, _) in STUDY_METRICS.items()}}
    scores = pd.DataFrame(cells).T.rename_axis(["reference", "scored"])
    paired = study.differences
    differences = pd.DataFrame({"reference": paired["reference"], "metric": paired["metric"],
                                **_difference_columns(paired, "model − reader [95% CI]")})
    images = [Image.from_file(p) for p in study.figures]
    report.add_section("Readers", intro, Table(ranges, "Where the model falls within the readers' range"),
                       Table(scores.reset_index(), "Against the consensus of the other readers", index=False),
                       Table(differences, "Model − reader, paired", index=False), *images)


def outcome_section(run: EvaluationRun, report: Report) -> None:
    """AUROC of the CSI for the outcome, model and readers, their operating points and ROC curves."""
    outcome = run.outcome
    if outcome is None:
        return
    intro = Text(f"{run.studied}: {outcome.column}, {outcome.positives} positive of {outcome.images} images with a "
                 "known outcome and a predicted CSI. AUROC of each CSI with its 95% bootstrap interval "
                 f"({outcome.resampled} resampled); an operating point calls CSI above its threshold positive (the "
                 "AHF thresholds, and the model's Youden point chosen on these same images, optimistic).", muted=True)
    auroc = pd.DataFrame({"images": outcome.auroc["images"].astype(int), "positives": outcome.auroc["positives"]
                          .astype(int), "AUROC [95% CI]": [_ci(r.auroc, r.ci_low, r.ci_high)
                                                           for r in outcome.auroc.itertuples()]})
    blocks: list = [intro, Table(auroc, "AUROC of the CSI")]
    if not outcome.comparisons.empty:
        c = outcome.comparisons
        blocks.append(Table(pd.DataFrame({
            "images": c["images"].astype(int), "model": c["model_auroc"], "reader": c["reader_auroc"],
            **_difference_columns(c, "model − reader [95% CI]")}, index=c.index),
            "Model against each reader on the same patients (paired)"))
    if not outcome.operating_points.empty:
        points = outcome.operating_points
        shown = pd.DataFrame({"scorer": points["scorer"], "rule": points["rule"], "threshold": points["threshold"],
                              **{m: [_ci(getattr(r, m), getattr(r, f"{m}_ci_low"), getattr(r, f"{m}_ci_high"))
                                     for r in points.itertuples()]
                                 for m in ("sensitivity", "specificity", "ppv", "npv")}})
        blocks.append(Table(shown, "Operating points [95% CI]", index=False, digits=2))
    blocks += [Image.from_file(p) for p in outcome.figures]
    report.add_section(f"Outcome: {outcome.column}", *blocks, anchor="outcome")


def confusion_section(run: EvaluationRun, report: Report) -> None:
    """Per split: the six zones' matrices, then all zones and the AHF class side by side."""
    paths = run.figures.get("confusion", [])
    if not paths:
        return
    blocks: list = [Text("Counts; colour is the share of the true class's row (its recall).", muted=True)]
    for split in run.metrics:
        drawn = [p for p in paths if p.stem.endswith(f"_{split}")]
        if drawn:
            zones, *others = drawn
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
    site_section,
    metrics_section,
    intervals_section,
    agreement_section,
    calibration_section,
    readers_section,
    outcome_section,
    confusion_section,
    training_curves_section,
    saliency_section,
)


def write_evaluation_report(run: EvaluationRun) -> Path:
    """<out_dir>/report.html with every section of EVAL_SECTIONS."""
    report = Report(run.title or f"Evaluation: {run.checkpoint.parent.name}",
                    subtitle=f"{run.cfg.model.model_arch} · checkpoint {run.checkpoint.name} · "
                             f"splits {', '.join(run.metrics)}")
    for build in EVAL_SECTIONS:
        build(run, report)
    return report.write(run.out_dir / "report.html")
