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


_RANK = {ext: rank for rank, ext in enumerate(SUPPORTED_EXTENSIONS)}  # content-sniffed DICOM ranks last


def _scan(image_dir: Path, recursive: bool, extension: str) -> tuple[dict[str, Path], set[str]]:
    """index_directory's FileID -> file, and the FileIDs whose file is a symbolic link (the only
    files found that may lead outside image_dir: folders that are links are not entered)."""
    found: dict[str, tuple[int, Path, bool]] = {}  # FileID -> (rank, file, is a link)
    folders = [""]  # relative to image_dir, each ending in "/" but the root
    while folders:
        relative = folders.pop()
        try:
            with os.scandir(image_dir / relative) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:  # an unreadable sub-folder holds nothing to find, as for os.walk
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if recursive and not entry.is_symlink():
                    folders.append(f"{relative}{entry.name}/")
                continue
            ext = file_extension(entry.name)
            if (extension and ext != extension) or not entry.is_file():
                continue
            if extension or ext in _RANK:
                file_id = relative + entry.name[: len(entry.name) - len(ext)]
            elif looks_like_dicom(entry.path):  # export tools write DICOM without extension or as 1.2.840.1136.4
                file_id = relative + entry.name
            else:
                continue
            rank = _RANK.get(ext, len(_RANK))
            if file_id not in found or rank < found[file_id][0]:
                found[file_id] = (rank, Path(entry.path), entry.is_symlink())
    return {k: path for k, (_, path, _) in found.items()}, {k for k, (_, _, link) in found.items() if link}


def index_directory(image_dir: Path, recursive: bool = False, extension: str = "") -> dict[str, Path]:
    """FileID -> file for every image in `image_dir` (and its sub-folders when `recursive`), listed
    once rather than per FileID. `extension` (e.g. '.png') keeps only files with it, in any case.
    Hidden files (macOS '._name' copies, '.DS_Store') are not images and are left out."""
    image_dir = Path(image_dir)
    return _scan(image_dir, recursive, extension.lower())[0] if image_dir.is_dir() else {}


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
    index, linked = _scan(image_dir, recursive, extension.lower()) if image_dir.is_dir() else ({}, set())
    by_number: dict[str, list[str]] = defaultdict(list)
    for file_id in index:
        number = number_spelling(file_id)
        if number is not None:
            by_number[number].append(file_id)
    explicit = table["path"] if "path" in table else pd.Series([""] * len(table))
    paths: list[Path | None] = []
    named = explicit.astype(bool).to_numpy()  # rows whose file the table names: whether it exists is asked below
    respelt: list[str] = []
    for row, (file_id, given) in enumerate(zip(table["FileID"], explicit)):
        if given:
            where = f"{source}: line {row + 2} (FileID {file_id})"
            paths.append(_explicit_path(given, image_dir, allow_outside, where))
            continue
        key = file_id if file_id in index else None
        if key is None:
            spellings = by_number.get(number_spelling(file_id) or "", [])
            if len(spellings) > 1:
                raise DataError(f"{source}: line {row + 2} (FileID {file_id}): matches several files under other "
                                f"spellings of the same number: {', '.join(index[s].name for s in spellings)}; "
                                "rename all but one")
            if spellings:
                key = spellings[0]
                respelt.append(f"{file_id} -> {index[key].relative_to(image_dir).as_posix()}")
        if key in linked and not allow_outside and not _inside(index[key], image_dir):
            raise DataError(f"{source}: line {row + 2} (FileID {file_id}): {index[key]} is a symbolic link leading "
                            f"outside image_dir {image_dir}; set [Data] allow_outside_paths = true to follow it")
        paths.append(None if key is None else index[key])
    if respelt:
        more = f" and {len(respelt) - _LISTED} more" if len(respelt) > _LISTED else ""
        logger.warning(f"{source}: {len(respelt)} FileID(s) matched a file under another spelling of the "
                       f"same number: {', '.join(respelt[:_LISTED])}{more}")
    return [p if p is not None and (not named[row] or p.is_file()) else None for row, p in enumerate(paths)]
