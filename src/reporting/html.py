"""Self-contained HTML reports: sections of blocks, every figure inline, no network needed.

A report is a list of sections; a section is a title and blocks (text, tables, PNG images,
plotly figures, galleries). Images are embedded as base64 data URIs and plotly's JavaScript is
embedded once, in full, when a plotly block is present, so the one file can be mailed and
opened offline in any browser.

    report = Report("Evaluation of run X", subtitle="checkpoint best_model.pth")
    report.add_section("Calibration", Text("..."), Table(df, caption="ECE"), Image.from_figure(fig))
    report.write(path)
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.utils.io import atomic_write_text


class Block:
    """One piece of a section's body."""

    uses_plotly = False

    def html(self) -> str:
        raise NotImplementedError


@dataclass
class Text(Block):
    """A paragraph of plain text (escaped)."""

    text: str
    muted: bool = False

    def html(self) -> str:
        return f'<p class="{"muted" if self.muted else ""}">{html.escape(self.text)}</p>'


@dataclass
class Heading(Block):
    """A sub-heading inside a section."""

    text: str

    def html(self) -> str:
        return f"<h3>{html.escape(self.text)}</h3>"


@dataclass
class KeyValues(Block):
    """A two-column list of labelled facts (data counts, settings)."""

    items: dict[str, object]
    caption: str = ""

    def html(self) -> str:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.items.items())
        return f'<table class="kv">{_caption(self.caption)}{rows}</table>'


@dataclass
class Table(Block):
    """A DataFrame as an HTML table; floats shown with `digits` decimals, NaN as an em dash."""

    frame: pd.DataFrame
    caption: str = ""
    digits: int = 3
    index: bool = True

    def html(self) -> str:
        # The index's name goes in the header's corner rather than on a row of its own.
        frame = self.frame.rename_axis(index=None, columns=self.frame.index.name) if self.index else self.frame
        body = frame.to_html(index=self.index, border=0, classes="data", na_rep="—",
                                  float_format=lambda x: f"{x:.{self.digits}f}", escape=True)
        return f'<div class="table-wrap">{_caption(self.caption, "div")}{body}</div>'


@dataclass
class Image(Block):
    """A PNG, embedded as a data URI."""

    png: bytes
    caption: str = ""
    alt: str = ""

    @classmethod
    def from_file(cls, path: str | Path, caption: str = "") -> Image:
        return cls(Path(path).read_bytes(), caption, alt=Path(path).name)

    @classmethod
    def from_figure(cls, fig, caption: str = "", dpi: int = 110) -> Image:
        """A matplotlib figure (closed afterwards)."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return cls(buffer.getvalue(), caption)

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        alt = html.escape(self.alt or self.caption or "figure", quote=True)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"{_caption(self.caption, 'figcaption')}</figure>")


@dataclass
class LinkedImage(Block):
    """An image file beside the report, by relative address (for folders of many figures)."""

    src: str
    caption: str = ""

    def html(self) -> str:
        return (f'<figure><img src="{html.escape(self.src, quote=True)}" alt="{html.escape(self.src, quote=True)}">'
                f"{_caption(self.caption, 'figcaption')}</figure>")


@dataclass
class Gallery(Block):
    """Images one under the other at full width (e.g. one saliency strip per radiograph)."""

    images: list[Image | LinkedImage]

    def html(self) -> str:
        return '<div class="gallery">' + "".join(image.html() for image in self.images) + "</div>"


@dataclass
class Row(Block):
    """Blocks side by side, sharing the width equally."""

    blocks: list[Block]

    @property
    def uses_plotly(self) -> bool:
        return any(b.uses_plotly for b in self.blocks)

    def html(self) -> str:
        return '<div class="row">' + "".join(f"<div>{b.html()}</div>" for b in self.blocks) + "</div>"


@dataclass
class KeyFigures(Block):
    """Headline numbers as tiles: label -> value (already formatted), with an optional note each."""

    figures: dict[str, str]
    notes: dict[str, str] = field(default_factory=dict)

    def html(self) -> str:
        tiles = "".join(f'<div class="tile"><div class="value">{html.escape(v)}</div>'
                        f'<div class="label">{html.escape(k)}</div>'
                        f'<div class="note">{html.escape(self.notes.get(k, ""))}</div></div>'
                        for k, v in self.figures.items())
        return f'<div class="tiles">{tiles}</div>'


@dataclass
class Plotly(Block):
    """An interactive plotly figure; its JavaScript comes inline with the report."""

    figure: object  # plotly.graph_objects.Figure
    caption: str = ""
    uses_plotly = True

    def html(self) -> str:
        div = self.figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        return f'<figure class="plotly">{div}{_caption(self.caption, "figcaption")}</figure>'


@dataclass
class Section:
    title: str
    blocks: tuple[Block, ...]
    anchor: str


def _caption(text: str, tag: str = "caption") -> str:
    return f"<{tag}>{html.escape(text)}</{tag}>" if text else ""


def _anchor(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    anchor, n = base, 1
    while anchor in taken:
        n += 1
        anchor = f"{base}-{n}"
    return anchor


@dataclass
class Report:
    """An HTML report built section by section, written as one self-contained file."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def add_section(self, title: str, *blocks: Block, anchor: str | None = None) -> Section:
        """Append a section; its anchor (the element id, and the navigation link) derives from the
        title unless given."""
        section = Section(title, blocks, anchor or _anchor(title, {s.anchor for s in self.sections}))
        self.sections.append(section)
        return section

    def html(self) -> str:
        nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "".join(
            f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(b.html() for b in s.blocks)}</section>'
            for s in self.sections)
        script = ""
        if any(b.uses_plotly for s in self.sections for b in s.blocks):
            from plotly.offline import get_plotlyjs

            script = f"<script>{get_plotlyjs()}</script>"
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>{script}</head><body>"
                f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(self.subtitle)}</p>"
                f"<nav>{nav}</nav></header><main>{body}</main></body></html>")

    def write(self, path: str | Path) -> Path:
        atomic_write_text(path, self.html())
        return Path(path)


_CSS = """
:root { --ink: #1d2630; --muted: #5f6b7a; --line: #dde3ea; --accent: #1f5f99; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 32px 10px;
         position: sticky; top: 0; z-index: 10; }
h1 { margin: 0; font-size: 22px; }
header p { margin: 2px 0 8px; color: var(--muted); }
nav { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 32px 48px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px 24px 18px;
          margin: 18px 0; scroll-margin-top: 110px; }
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
p.muted { color: var(--muted); }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
caption, .table-wrap > div { text-align: left; font-weight: 600; margin-bottom: 4px; }
table.kv th { text-align: left; font-weight: 600; padding: 3px 18px 3px 0; color: var(--muted); }
table.kv td { padding: 3px 0; }
.table-wrap { overflow-x: auto; }
table.data th, table.data td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: right; }
table.data thead th { background: var(--bg); }
table.data tbody th { text-align: left; }
table.data tbody tr:hover { background: #eef4fb; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.gallery figure { border-top: 1px solid var(--line); padding-top: 10px; }
.row { display: flex; gap: 18px; align-items: flex-start; }
.row > div { flex: 1 1 0; min-width: 0; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 8px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 150px;
        background: var(--bg); }
.tile .value { font-size: 24px; font-weight: 600; color: var(--accent); }
.tile .label { font-size: 13px; font-weight: 600; }
.tile .note { font-size: 12px; color: var(--muted); }
"""
