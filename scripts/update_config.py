"""Re-render config/config.ini from the schema, keeping its current values.

Run after adding or documenting a key in src/config/schema.py; a test fails while the shipped
file and the schema disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from src.config.loader import load_config
from src.config.render import SHIPPED_HEADER, render_ini
from src.utils.io import atomic_write_text

if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "config/config.ini")
    cfg = load_config(path if path.exists() else None, env={})
    atomic_write_text(path, render_ini(cfg, SHIPPED_HEADER, keep_secrets=True))
    print(f"wrote {path}")
