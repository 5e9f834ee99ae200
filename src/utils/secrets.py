"""Secrets never leave the process: database passwords in URLs and the W&B API key are masked in
everything the tool logs or writes (config snapshots, checkpoints, W&B config, error messages)."""

from __future__ import annotations

import os
import re

MASK = "***"
# scheme://user:PASSWORD@host...: the password is what lies between the user's ':' and the '@'.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]+@")
_SECRET_VARIABLES = ("WANDB_API_KEY",)


def mask_secrets(text: str) -> str:
    """`text` with every URL password and the value of every secret environment variable masked."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 8:  # a short value would mask ordinary words
            text = text.replace(value, MASK)
    return text
