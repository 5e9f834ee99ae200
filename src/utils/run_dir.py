"""Run directories: models/<YYYYmmdd_HHMMSS>_<arch>_<name>/."""

from __future__ import annotations

import time
from pathlib import Path

from src.utils.errors import CSIError

BEST, LAST = "best_model.pth", "last_model.pth"


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
