"""Run directories: models/<YYYYmmdd_HHMMSS>_<arch>_<name>/."""

from __future__ import annotations

import time
from pathlib import Path

from src.utils.errors import CSIError

BEST, LAST = "best_model.pth", "last_model.pth"
FOLDS_CSV = "folds.csv"  # marks a cross-validation directory: FileID, fold (0 = test split)


def create_run_dir(output_dir: str | Path, arch: str, name: str) -> Path:
    """A new, empty run directory (a numeric suffix avoids clashes within the same second)."""
    base = Path(output_dir) / f"{time.strftime('%Y%m%d_%H%M%S')}_{arch}_{name}"
    candidate, n = base, 1
    while True:
        try:
            (candidate / "logs").mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def find_latest_run(output_dir: str | Path) -> Path:
    """The most recently created run directory under `output_dir` that holds a checkpoint."""
    runs = [p for p in Path(output_dir).glob("*/") if (p / LAST).is_file() or (p / BEST).is_file()]
    if not runs:
        raise CSIError(f"{output_dir}: no trained run found; train one first or pass --run/--checkpoint")
    return max(runs, key=lambda p: (p / "config.ini").stat().st_mtime if (p / "config.ini").exists() else 0)


def cv_dir(output_dir: str | Path, name: str) -> Path:
    """A cross-validation's directory <output_dir>/cv/<name>/: folds.csv, fold_<k>/ runs and summaries."""
    return Path(output_dir) / "cv" / name


def fold_dir(cv: Path, fold: int) -> Path:
    return cv / f"fold_{fold}"


def is_cv_dir(path: str | Path) -> bool:
    return (Path(path) / FOLDS_CSV).is_file()


def fold_dirs(cv: str | Path) -> list[Path]:
    """The fold run directories of a cross-validation directory, by fold number."""
    found = [p for p in Path(cv).glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))
