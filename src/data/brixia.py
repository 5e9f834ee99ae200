"""[Data] label_format = brixia: the BrixIA COVID-19 data set's label files, read as distributed.

What is known of them, and where from (nothing here is guessed; what the documentation leaves
open is read leniently and named as such):

- Zones. The project page https://brixia.github.io/ (section "Brixia-score"; the repository
  README https://github.com/BrixIA/Brixia-score-COVID-19 carried the same section in its earlier
  versions and keeps its figure, figures/brixiascore.png) cuts each lung of a frontal (AP or PA)
  radiograph into three zones: upper zones A and D above the inferior wall of the aortic arch,
  middle zones B and E from there to the inferior wall of the right inferior pulmonary vein, lower
  zones C and F below it; each zone is scored 0-3. Which lung A-C belong to is not said in words:
  the figure puts A, B, C on the image's left half, opposite the "L" side marker of its panels
  (b) and (c), i.e. on the patient's right as a radiograph is viewed, and the authors' own loader
  (src/datasets/brixiascore_cohen.py) arranges the six scores as two columns, A-C then D-F. Hence
  A, B, C = right_sup, right_mid, right_inf and D, E, F = left_sup, left_mid, left_inf.
- metadata_global (project page, section "Brixia score COVID-19 dataset", which documents
  metadata_global_v1.csv): filename (the DICOM file), StudyDate, Modality, StudyId, BrixiaScore
  ("the 6 regions ... ABCDEF from 0 to 3": one digit per zone, in that order), BrixiaScoreGlobal,
  ConsensusTestset (whether the image is in the consensus set, re-annotated by 4 more
  radiologists: the test split here), Subject (the patient), Sex, AgeAtStudyDateFiveYear.
- metadata_consensus (same section): filename, MeanA..MeanF (the mean of the 5 radiologists per
  zone), S-Global, ModeA..ModeF (the score chosen most often), J-Global.
- The public subset (README, section "Annotation and CXR from Cohen's dataset", and its
  data/public-annotations.csv, comma-separated with a UTF-8 BOM): filename, S-A..S-F (a senior
  radiologist, 0-3), S-Global, J-A..J-F (a junior one), J-Global: two readers here, "senior" and
  "junior".

Not in the documentation, so read leniently: column names match in any case (the page writes
`filename`, version 2 of the file `Filename`); the separator is detected (`;`, `,` or tab);
ConsensusTestset takes 0/1, true/false or yes/no. BrixiaScore is six digits; a spreadsheet that
saved it as a number dropped its leading zeros (000012 became 12), and since every score has
exactly six digits, a shorter one is padded back with zeros on the left (12 -> 000012) and the
count of restored scores logged.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.consensus import consensus, reader_column
from src.data.labels import (
    check_unique_ids,
    normalize_file_ids,
    parse_score_columns,
    read_csv_table,
    read_outcome,
    shown,
)
from src.data.zones import KNOWN_CLASSES, UNKNOWN, ZONES, csi_from_scores
from src.utils.errors import DataError
from src.utils.logging import logger

# BrixIA's zone letter -> our zone (see the module docstring for the source of each).
BRIXIA_ZONES = {"A": "right_sup", "B": "right_mid", "C": "right_inf",
                "D": "left_sup", "E": "left_mid", "F": "left_inf"}
LETTERS = tuple(BRIXIA_ZONES)
# Column order of our ZONES in BrixIA letters: ZONES[i] is zone LETTER_OF_ZONE[i].
LETTER_OF_ZONE = tuple(next(letter for letter, zone in BRIXIA_ZONES.items() if zone == z) for z in ZONES)
PUBLIC_READERS = {"S": "senior", "J": "junior"}
_SCORE_DIGITS = len(LETTERS)
_NUMBER = re.compile(r"(\d+)(\.0+)?")
_TRUE_WORDS, _FALSE_WORDS = ("1", "true", "yes", "y", "1.0"), ("0", "false", "no", "n", "0.0", "")


def parse_brixia_score(text: str, where: str) -> tuple[np.ndarray, bool]:
    """Zone scores in ZONES order of one BrixiaScore cell, and whether its leading zeros were
    restored. Empty: every zone Unknown."""
    value = text.strip()
    if value == "":
        return np.full(len(ZONES), UNKNOWN), False
    match = _NUMBER.fullmatch(value)
    if not match or len(match.group(1)) > _SCORE_DIGITS:
        raise DataError(f"{where}: BrixiaScore {shown(value)!r} is not six digits 0-3 (zones A-F)")
    digits = match.group(1).zfill(_SCORE_DIGITS)
    too_high = [(letter, d) for letter, d in zip(LETTERS, digits) if int(d) > max(KNOWN_CLASSES)]
    if too_high:
        letter, digit = too_high[0]
        raise DataError(f"{where}: BrixiaScore {value!r} gives zone {letter} ({BRIXIA_ZONES[letter]}) the score "
                        f"{digit}; each of the six digits must be 0-3")
    by_letter = dict(zip(LETTERS, (int(d) for d in digits)))
    return np.array([by_letter[letter] for letter in LETTER_OF_ZONE]), digits != match.group(1)


def _columns_of(by_lower: dict[str, str], pattern: str) -> list[str] | None:
    """The six columns `pattern` (e.g. 'mean{}') names for letters in ZONES order, None unless all exist."""
    names = [pattern.format(letter).lower() for letter in LETTER_OF_ZONE]
    return [by_lower[n] for n in names] if all(n in by_lower for n in names) else None


def _test_flags(cells: pd.Series, where) -> np.ndarray:
    text = cells.str.strip().str.lower()
    bad = np.flatnonzero(~text.isin(_TRUE_WORDS + _FALSE_WORDS).to_numpy())
    if len(bad):
        raise DataError(f"{where(bad[0])}, column ConsensusTestset: {cells.iat[bad[0]]!r} is not a yes/no flag; "
                        "allowed 1/0, true/false, yes/no")
    return text.isin(_TRUE_WORDS).to_numpy()


def read_brixia(path: str | Path, separator: str = "", encoding: str = "auto", consensus_rule: str = "mean",
                outcome_column: str = "") -> pd.DataFrame:
    """A BrixIA label file as read_labels returns a labels file: FileID (the file name without its
    extension), path (the file name, found in [Data] image_dir), the six zones and csi, and as the
    file has them PatientID (Subject), split ("test" for ConsensusTestset, else "" for the split to
    assign), the readers' columns (public subset) and `outcome`."""
    path = Path(path)
    raw, by_lower = read_csv_table(path, separator, encoding, ("filename",))
    lines = raw.index.to_numpy()
    names = raw[by_lower["filename"]].str.strip()
    file_ids = normalize_file_ids(names.str.replace(r"(\.nii)?\.[^./\\]*\Z", "", regex=True))
    table = pd.DataFrame({"FileID": file_ids.to_numpy(dtype=object)})
    empty = np.flatnonzero((names == "").to_numpy())
    if len(empty):
        raise DataError(f"{path}: line {lines[empty[0]]}: empty Filename")

    def where(row: int) -> str:
        return f"{path}: line {lines[row]} (Filename {shown(names.iat[row])})"

    readers: dict[str, np.ndarray] = {}
    if "brixiascore" in by_lower:
        parsed = [parse_brixia_score(cell, where(row)) for row, cell in enumerate(raw[by_lower["brixiascore"]])]
        scores = np.stack([s for s, _ in parsed]) if parsed else np.empty((0, len(ZONES)), dtype=np.int64)
        restored = sum(r for _, r in parsed)
        if restored:
            logger.info(f"{path}: {restored} BrixiaScore value(s) had lost their leading zeros (saved as a number); "
                        "restored to six digits (e.g. 12 -> 000012)")
    elif _columns_of(by_lower, "mode{}") and _columns_of(by_lower, "mean{}"):
        if consensus_rule == "median":
            raise DataError(f"{path}: BrixIA's consensus file holds each zone's mean and mode of its readers, not "
                            "their scores: [Data] consensus = median cannot be formed; use mean (MeanA..MeanF "
                            "rounded, a half up) or majority (ModeA..ModeF)")
        columns = _columns_of(by_lower, "mode{}" if consensus_rule == "majority" else "mean{}")
        if consensus_rule == "majority":
            scores = parse_score_columns(raw, columns, columns, path, table["FileID"])
        else:
            means = raw[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
            bad = np.argwhere(~((means >= 0) & (means <= max(KNOWN_CLASSES))))
            if len(bad):
                row, column = bad[0]
                raise DataError(f"{where(row)}, column {columns[column]}: {raw[columns[column]].iat[row]!r} is not "
                                "a mean score from 0 to 3")
            scores = np.floor(means + 0.5).astype(np.int64)
    elif _columns_of(by_lower, "s-{}") and _columns_of(by_lower, "j-{}"):
        for prefix, reader in PUBLIC_READERS.items():
            columns = _columns_of(by_lower, prefix + "-{}")
            readers[reader] = parse_score_columns(raw, columns, columns, path, table["FileID"])
        scores = consensus(np.stack(list(readers.values())), consensus_rule)
    else:
        raise DataError(f"{path}: not a BrixIA label file ([Data] label_format = brixia): expected BrixiaScore "
                        "(metadata_global), MeanA..MeanF and ModeA..ModeF (consensus) or S-A..S-F and J-A..J-F "
                        f"(public subset) beside Filename; found {shown(', '.join(raw.columns))}")
    for z, zone in enumerate(ZONES):
        table[zone] = scores[:, z]
    table["csi"] = csi_from_scores(scores)
    for reader, values in readers.items():
        for z, zone in enumerate(ZONES):
            table[reader_column(zone, reader)] = values[:, z]
    check_unique_ids(table, lines, path)
    table["path"] = names.to_numpy()
    if "subject" in by_lower:
        table["PatientID"] = raw[by_lower["subject"]].str.strip().to_numpy()
    if "consensustestset" in by_lower:
        table["split"] = np.where(_test_flags(raw[by_lower["consensustestset"]], where), "test", "").astype(object)
    if outcome_column:
        table["outcome"] = read_outcome(raw, by_lower, outcome_column, path, table["FileID"])
    return table
