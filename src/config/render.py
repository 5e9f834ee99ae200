"""Write a Config as INI text: documented (every key with its help) and re-loadable."""

from __future__ import annotations

import textwrap

from src.config.loader import describe_allowed
from src.config.schema import Config, section_fields, section_names


def format_value(value: object) -> str:
    """INI spelling of a typed value ('$' doubled for ExtendedInterpolation)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("$", "$$")


def render_ini(cfg: Config, header: str = "", documented: bool = True) -> str:
    """INI text holding every key of `cfg`; with `documented`, each key is preceded by its help."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section in section_names():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for name, fld in section_fields(section).items():
            if documented:
                default = format_value(fld.default)
                doc = f"{fld.metadata['help']} Allowed: {describe_allowed(fld)}. Default: {default or '(empty)'}."
                lines.extend(textwrap.wrap(doc, 88, initial_indent="# ", subsequent_indent="#   "))
            lines.append(f"{name} = {format_value(getattr(getattr(cfg, section.lower()), name))}")
    return "\n".join(lines) + "\n"
