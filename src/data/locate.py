"""Find the image file of each FileID."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from src.data.readers import SUPPORTED_EXTENSIONS, file_extension


def index_directory(image_dir: Path) -> dict[str, Path]:
    """stem -> file for every supported image directly in `image_dir` (listed once, not per FileID)."""
    found: dict[str, Path] = {}
    if not image_dir.is_dir():
        return found
    for entry in os.scandir(image_dir):
        ext = file_extension(entry.name)
        if entry.is_file() and ext in SUPPORTED_EXTENSIONS:
            # Prefer the first extension in SUPPORTED_EXTENSIONS order when a stem has several files.
            stem = entry.name[: -len(ext)]
            current = found.get(stem)
            if current is None or SUPPORTED_EXTENSIONS.index(ext) < SUPPORTED_EXTENSIONS.index(
                file_extension(current.name)
            ):
                found[stem] = Path(entry.path)
    return found


def locate_images(table: pd.DataFrame, image_dir: str | Path, extension: str = "") -> list[Path | None]:
    """Path of each row's image, or None where no file exists.

    A `path` column wins (relative paths are taken from `image_dir`); otherwise the file is
    `<image_dir>/<FileID><extension>`, or with an empty extension any supported one.
    """
    image_dir = Path(image_dir)
    index = None if extension else index_directory(image_dir)
    explicit = table["path"] if "path" in table else pd.Series([""] * len(table))
    paths: list[Path | None] = []
    for file_id, given in zip(table["FileID"], explicit):
        if given:
            candidate = Path(given)
            candidate = candidate if candidate.is_absolute() else image_dir / candidate
        elif extension:
            candidate = image_dir / f"{file_id}{extension if extension.startswith('.') else '.' + extension}"
        else:
            candidate = index.get(file_id)
        paths.append(candidate if candidate is not None and candidate.is_file() else None)
    return paths
