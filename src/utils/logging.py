"""The tool's logger: loguru to the console and to a rotating file."""

from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

from src.utils.secrets import mask_secrets

__all__ = ["logger", "setup_logging", "add_file_log"]

_CONSOLE_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}"


def _mask_record(record) -> None:
    record["message"] = mask_secrets(record["message"])


def setup_logging(level: str = "INFO") -> None:
    """Console logging at `level` (to stderr, so stdout carries only results)."""
    logger.remove()
    logger.configure(patcher=_mask_record)  # console and file alike
    logger.add(sys.stderr, level=level.upper(), format=_CONSOLE_FORMAT, backtrace=False, diagnose=False)


def add_file_log(log_dir: str | Path, level: str = "DEBUG") -> int:
    """Also log to <log_dir>/csi_predictor.log, rotated at 10 MB, 5 files kept."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return logger.add(Path(log_dir) / "csi_predictor.log", level=level.upper(), rotation="10 MB",
                      retention=5, enqueue=False, backtrace=False, diagnose=False)
