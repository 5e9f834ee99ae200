"""Find the image file of each FileID.

Invariants: every file found lies inside image_dir (after following symbolic links) unless
[Data] allow_outside_paths is set; a FileID matches a file under its own spelling first and under
another spelling of the same number (00042 / 42 / 42.0) only when that is unambiguous, and every
such match is reported.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path, PurePath

import pandas as pd

from src.data.readers import SUPPORTED_EXTENSIONS, file_extension, looks_like_dicom
from src.utils.errors import DataError
from src.utils.logging import logger

_LISTED = 10  # matches named in the log line before "and N more"
_NUMBER = re.compile(r"0*(\d+?)(\.0+)?")


def number_spelling(file_id: str) -> str | None:
    """The number an all-digit ID stands for ('00042', '42', '42.0' -> '42'); None for other IDs."""
    match = _NUMBER.fullmatch(file_id)
    return match.group(1) if match else None


def _image_key(root: Path, path: Path, extension: str) -> str | None:
    """FileID of `path` (relative to `root`, '/'-separated, without extension), or None if no image."""
    ext = file_extension(path.name)
    if extension:
        if ext != extension:
            return None
    elif ext not in SUPPORTED_EXTENSIONS:
        # Export tools write DICOM without extension or under UID-like names (1.2.840.1136.4).
        return path.relative_to(root).as_posix() if looks_like_dicom(path) else None
    return path.relative_to(root).as_posix()[: -len(ext)]


def _rank(path: Path) -> int:
    """Preference among files of one FileID: SUPPORTED_EXTENSIONS order, content-sniffed DICOM last."""
    ext = file_extension(path.name)
    return SUPPORTED_EXTENSIONS.index(ext) if ext in SUPPORTED_EXTENSIONS else len(SUPPORTED_EXTENSIONS)


def index_directory(image_dir: Path, recursive: bool = False, extension: str = "") -> dict[str, Path]:
    """FileID -> file for every image in `image_dir` (and its sub-folders when `recursive`), listed
    once rather than per FileID. `extension` (e.g. '.png') keeps only files with it, in any case.
    Hidden files (macOS '._name' copies, '.DS_Store') are not images and are left out."""
    found: dict[str, Path] = {}
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        return found
    for folder, subfolders, names in os.walk(image_dir):
        subfolders[:] = sorted(d for d in subfolders if recursive and not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder, name)
            file_id = _image_key(image_dir, path, extension.lower()) if path.is_file() else None
            if file_id is not None and (file_id not in found or _rank(path) < _rank(found[file_id])):
                found[file_id] = path
    return found


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _explicit_path(given: str, image_dir: Path, allow_outside: bool, where: str) -> Path:
    """The file a `path` cell names, refused when it leaves image_dir without allow_outside_paths."""
    candidate = Path(given)
    escapes = candidate.is_absolute() or ".." in PurePath(given).parts
    candidate = candidate if candidate.is_absolute() else image_dir / candidate
    if not allow_outside and (escapes or (candidate.exists() and not _inside(candidate, image_dir))):
        raise DataError(f"{where}: path {given!r} leads outside image_dir {image_dir}; use a path inside it "
                        "or set [Data] allow_outside_paths = true")
    return candidate


def locate_images(table: pd.DataFrame, image_dir: str | Path, extension: str = "", recursive: bool = False,
                  allow_outside: bool = False, source: str | Path = "labels") -> list[Path | None]:
    """Path of each row's image, or None where no file exists.

    A `path` column wins (relative paths are taken from `image_dir`); otherwise the FileID is looked
    up among the images of `image_dir` (with `extension` only, when set). `source` names the table
    in messages (row i is line i + 2 of it).
    """
    image_dir = Path(image_dir)
    extension = extension if not extension or extension.startswith(".") else "." + extension
    index = index_directory(image_dir, recursive, extension)
    by_number: dict[str, list[str]] = defaultdict(list)
    for file_id in index:
        number = number_spelling(file_id)
        if number is not None:
            by_number[number].append(file_id)
    explicit = table["path"] if "path" in table else pd.Series([""] * len(table))
    paths: list[Path | None] = []
    respelt: list[str] = []
    for row, (file_id, given) in enumerate(zip(table["FileID"], explicit)):
        where = f"{source}: line {row + 2} (FileID {file_id})"
        if given:
            paths.append(_explicit_path(given, image_dir, allow_outside, where))
            continue
        candidate = index.get(file_id)
        if candidate is None:
            spellings = by_number.get(number_spelling(file_id) or "", [])
            if len(spellings) > 1:
                raise DataError(f"{where}: matches several files under other spellings of the same number: "
                                f"{', '.join(index[s].name for s in spellings)}; rename all but one")
            if spellings:
                candidate = index[spellings[0]]
                respelt.append(f"{file_id} -> {candidate.relative_to(image_dir).as_posix()}")
        if candidate is not None and not allow_outside and not _inside(candidate, image_dir):
            raise DataError(f"{where}: {candidate} is a symbolic link leading outside image_dir {image_dir}; "
                            "set [Data] allow_outside_paths = true to follow it")
        paths.append(candidate)
    if respelt:
        more = f" and {len(respelt) - _LISTED} more" if len(respelt) > _LISTED else ""
        logger.warning(f"{source}: {len(respelt)} FileID(s) matched a file under another spelling of the "
                       f"same number: {', '.join(respelt[:_LISTED])}{more}")
    return [p if p is not None and p.is_file() else None for p in paths]
