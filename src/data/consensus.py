"""Several readers' zone scores: their columns in a labels table and the consensus that is the target.

A labels table carries one reader's scores of zone Z as the column `Z@<reader>` (ints): 0-3, 4 for
Unknown (the reader found the zone ungradable), NOT_READ where the reader did not read the image
at all (a reader's own file without that row). The consensus of a zone, [Data] consensus:

- mean: the mean of the scores of the readers who scored it, a half rounded up (1, 2 -> 2);
- median: their median, the mean of the two middle scores for an even count, a half rounded up
  (1, 1, 2, 2 -> 2): with two readers mean and median agree;
- majority: the score most of them gave; a tie goes to the tied score nearest the median above,
  then to the higher (0, 0, 2, 2, 1 -> median 1 is not tied, 0 and 2 are as near: 2).

Halves round up, towards the more severe score, in every rule: one rule for all, stated once. A
zone's consensus is Unknown when more than half of the readers who read the image marked it
Unknown, or when none of them scored it: an ungradable zone is a reader's judgement, not a vote
for any score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from src.data.zones import KNOWN_CLASSES, UNKNOWN, ZONES

NOT_READ = -1
READER_SEPARATOR = "@"
RULES = ("mean", "median", "majority")


def reader_column(zone: str, reader: str) -> str:
    return f"{zone}{READER_SEPARATOR}{reader}"


def reader_names(table: pd.DataFrame) -> list[str]:
    """The readers whose columns `table` holds, in the order of their first column."""
    names: dict[str, None] = {}
    for column in table.columns:
        zone, separator, reader = str(column).partition(READER_SEPARATOR)
        if separator and zone in ZONES:
            names[reader] = None
    return list(names)


def reader_scores(table: pd.DataFrame, readers: Sequence[str] | None = None) -> np.ndarray:
    """[R, N, 6] scores of `readers` (default: all of the table's), NOT_READ where a reader did not read."""
    readers = reader_names(table) if readers is None else readers
    return np.stack([table[[reader_column(z, r) for z in ZONES]].to_numpy(dtype=np.int64) for r in readers]) if len(
        readers) else np.empty((0, len(table), len(ZONES)), dtype=np.int64)


def _value_at(cumulative: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The score at 0-based `position` of each zone's sorted scores, from cumulative counts [..., 4]."""
    return (cumulative <= position[..., None]).sum(axis=-1)


def consensus(scores: np.ndarray, rule: str) -> np.ndarray:
    """[N, 6] consensus of readers' scores [R, N, 6] (0-3, UNKNOWN, NOT_READ) per `rule` (see the module)."""
    if rule not in RULES:
        raise ValueError(f"consensus rule must be one of {', '.join(RULES)}, got {rule!r}")
    scores = np.asarray(scores)
    counts = np.stack([(scores == c).sum(axis=0) for c in KNOWN_CLASSES], axis=-1)  # [N, 6, 4]
    scored = counts.sum(axis=-1)
    read = (scores != NOT_READ).sum(axis=0)
    unknown = (2 * (scores == UNKNOWN).sum(axis=0) > read) | (scored == 0)
    safe = np.maximum(scored, 1)
    if rule == "mean":
        mean = (counts * np.arange(len(KNOWN_CLASSES))).sum(axis=-1) / safe
        result = np.floor(mean + 0.5)
    else:
        cumulative = counts.cumsum(axis=-1)
        low, high = _value_at(cumulative, (safe - 1) // 2), _value_at(cumulative, safe // 2)
        median = np.ceil((low + high) / 2)  # a half rounds up
        result = median
        if rule == "majority":
            tied = counts == counts.max(axis=-1, keepdims=True)
            classes = np.arange(len(KNOWN_CLASSES))
            # Nearest the median first; among equally near, the higher score (smaller key).
            key = 10 * np.abs(classes - median[..., None]) - classes
            result = np.where(tied, key, np.inf).argmin(axis=-1)
    return np.where(unknown, UNKNOWN, result).astype(np.int64)
