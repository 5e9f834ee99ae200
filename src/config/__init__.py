"""Configuration. Legacy code reads `from src.config import cfg`: the config loaded from
config/config.ini in the working directory (schema defaults when there is none), on first use."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from src.config.loader import load_config
from src.config.schema import Config

__all__ = ["Config", "cfg", "get_config"]


@lru_cache(maxsize=1)
def get_config() -> Config:
    path = Path("config/config.ini")
    return load_config(path if path.is_file() else None)


def __getattr__(name: str):
    if name == "cfg":
        return get_config()
    raise AttributeError(f"module 'src.config' has no attribute {name!r}")
