"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

A write that fails (disk full, read-only filesystem, no permission) raises OutputError naming the
file, and leaves neither a temporary file nor a changed target behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from src.utils.errors import OutputError


class _RecordingFile:
    """A file whose write remembers the OSError it raised: torch.save reports a full disk as an
    opaque RuntimeError ("unexpected pos ..."), so the cause is kept here."""

    def __init__(self, handle: IO) -> None:
        self._handle, self.error = handle, None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`."""
    path, tmp, handle = Path(path), None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as raw:
            handle = _RecordingFile(raw)
            yield handle
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        error = exc if isinstance(exc, OSError) else getattr(handle, "error", None)
        if error is not None:
            raise OutputError(f"{path}: cannot write it: {error.strerror or error}") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_with(path: str | Path, write: Callable[[IO], None], binary: bool = True) -> None:
    """Atomically write `path` by calling `write(handle)` (e.g. torch.save, DataFrame.to_csv)."""
    with atomic_open(path, "wb" if binary else "w") as handle:
        write(handle)


def atomic_write_csv(path: str | Path, table) -> None:
    """Atomically write the DataFrame `table` to `path` as CSV, without its index."""
    atomic_write_with(path, lambda handle: table.to_csv(handle, index=False), binary=False)


def require_free_space(directory: str | Path, needed: int, what: str) -> None:
    """Refuse to start writing `needed` bytes of `what` under `directory` (which may not exist yet)
    when its filesystem has less free space."""
    existing = Path(directory).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutputError(f"{directory}: not enough free space for {what}: needs {needed / 1e6:.0f} MB, "
                          f"{free / 1e6:.0f} MB free; free some space or choose another directory")


def remove_temporaries(directory: str | Path) -> None:
    """Delete the temporary files atomic_open left in `directory` when its process was killed."""
    for leftover in Path(directory).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
