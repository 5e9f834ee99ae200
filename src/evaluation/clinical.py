"""The clinical questions eval answers where the labels allow: readers (several readers' columns:
src/evaluation/reader_study.py) and an outcome ([Evaluation] outcome_column:
src/evaluation/outcomes.py), on one split's predictions, with their figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from src.data.consensus import reader_names, reader_scores
from src.engine.metrics import predicted_csi
from src.engine.predict import Predictions
from src.evaluation.bootstrap import BootstrapSettings
from src.evaluation.outcomes import OutcomeAnalysis, analyse_outcome
from src.evaluation.reader_study import STUDY_METRICS, ReaderStudy, reader_csi, study_readers
from src.evaluation.stat_plots import plot_reader_range, plot_roc


def study_split(table: pd.DataFrame, pred: Predictions, split: str, units: Sequence[str], unit_name: str,
                consensus_rule: str, outcome_column: str, bootstrap: BootstrapSettings, ahf: tuple[float, float],
                out: Path) -> tuple[ReaderStudy | None, OutcomeAnalysis | None]:
    """The reader study and the outcome analysis of `pred` (one split), from the labels `table` (indexed
    by FileID); writes readers_<split>.png and roc_<split>.png to `out`. Either is None where the
    labels have no readers (fewer than two) or no outcome."""
    rows = table.loc[pred.file_ids]
    names = reader_names(rows)
    readers = dict(zip(names, reader_scores(rows, names)))
    study = study_readers(readers, pred.probs, units, unit_name, consensus_rule, bootstrap, ahf)
    if study is not None:
        study.figures.append(out / f"readers_{split}.png")
        plot_reader_range(study.scores, STUDY_METRICS, f"{split}: each reader and the model against the consensus "
                          "of the other readers (95% CIs)", study.figures[-1])
    outcome = None
    if outcome_column and "outcome" in rows:
        model_csi = predicted_csi(pred.probs.argmax(-1), pred.probs)
        low, high = ahf
        outcome = analyse_outcome(outcome_column, rows["outcome"].to_numpy(dtype=float), model_csi, reader_csi(readers),
                                  units, unit_name, {f"CSI > {low:g} (not AHF low)": low,
                                                     f"CSI > {high:g} (AHF high)": high}, bootstrap)
        if outcome.roc:
            outcome.figures.append(out / f"roc_{split}.png")
            plot_roc(outcome.roc, outcome.auroc, f"{split}: CSI against {outcome_column} "
                     f"({outcome.positives} of {outcome.images} positive)", outcome.figures[-1])
    return study, outcome


def units_of(table: pd.DataFrame, file_ids: Sequence[str]) -> tuple[list[str] | None, str]:
    """Each image's PatientID where the labels have one (else None) and what the bootstrap resamples."""
    if "PatientID" not in table:
        return None, "images"
    return table.loc[list(file_ids), "PatientID"].tolist(), "patients"

