"""Inputs that decode and would train, but are almost surely wrong: refused or warned about before
any costly work.

- An image far smaller than image_size (a 1x1 thumbnail, a wrong export): refused like an
  unreadable file (stop listing the FileIDs, or skip them with on_missing = skip). Its side must
  reach an eighth of image_size (a zone would otherwise be magnified more than 8x from a few
  pixels), and at the least 3x2, one pixel per zone.
- A constant image (nothing left after the percentile clipping: a blank frame, a failed
  exposure): warned about, naming the FileIDs. It is rarer than a thumbnail and harmless to the
  others, and a set may hold one on purpose (a test of what the model says about nothing); the
  warning says where to look.
- A split without a single known zone score: refused, it can neither train nor be evaluated.
- A split whose known zones all have one score: warned about. It trains (the model learns that
  score) and evaluates (an all-normal external set is a fair specificity check), but kappa and
  the macro averages say little and QWK is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from src.config.names import CLASS_NAMES
from src.data.zones import UNKNOWN, ZONES
from src.utils.errors import DataError
from src.utils.logging import logger

_LISTED = 10  # FileIDs named in a message before "and N more"
MAGNIFICATION_LIMIT = 8
_CHUNK = 256  # images read at once when looking for constant ones


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def smallest_image(image_size: int) -> tuple[int, int]:
    """(height, width) an image needs at least to hold six zones at `image_size` (see the module)."""
    side = math.ceil(image_size / MAGNIFICATION_LIMIT)
    return max(3, side), max(2, side)


def too_small(shapes: np.ndarray, image_size: int) -> np.ndarray:
    """Which decoded images (original [N, 2] heights and widths; 0 where not decoded) are too small."""
    height, width = smallest_image(image_size)
    decoded = shapes[:, 0] > 0
    return decoded & ((shapes[:, 0] < height) | (shapes[:, 1] < width))


def too_small_message(source: str | Path, file_ids: Sequence[str], shapes: np.ndarray, image_size: int) -> str:
    height, width = smallest_image(image_size)
    listed = _listed([f"{f} ({h}x{w})" for f, (h, w) in zip(file_ids, shapes.astype(int).tolist())])
    return (f"{source}: {len(file_ids)} image(s) far smaller than [Data] image_size {image_size}: {listed}; the "
            f"smallest that holds six zones at this size is {height}x{width} px (HxW), is it a wrong export?")


def warn_constant_images(images, rows: np.ndarray, file_ids: Sequence[str], source: str | Path) -> None:
    """Warn about the cached images (rows of `images`) with nothing left to see: every stored pixel 0."""
    blank = []
    for start in range(0, len(rows), _CHUNK):
        chunk = np.asarray(rows[start:start + _CHUNK])
        peaks = np.asarray(images[chunk]).reshape(len(chunk), -1).max(axis=1)
        blank += [file_ids[start + i] for i in np.flatnonzero(peaks == 0)]
    if blank:
        logger.warning(f"{source}: {len(blank)} constant image(s), nothing to see after decoding: {_listed(blank)}; "
                       "a blank frame or failed export? (kept)")


def check_split_scores(table: pd.DataFrame, source: str | Path) -> None:
    """Refuse a split without a known zone score; warn about one whose known zones all share a score."""
    for split, rows in table.groupby("split", sort=False):
        scores = rows[list(ZONES)].to_numpy()
        known = np.unique(scores[scores != UNKNOWN])
        if len(known) == 0:
            raise DataError(f"{source}: the {split} split's {len(rows)} image(s) have no known zone score (all "
                            "Unknown); it can neither train nor be evaluated: fix the labels or the split")
        if len(known) == 1:
            logger.warning(f"{source}: every known zone of the {split} split is {known[0]} "
                           f"({CLASS_NAMES[known[0]]}); its kappa and macro averages will say little")
