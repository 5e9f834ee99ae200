"""report.html and explain's index.html as a reader gets them: opened in a real headless Chromium,
offline, every image loaded, no console error, the expected sections present."""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from src.data.zones import ZONES
from src.reporting.html import Image, Plotly, Report, Table, Text
from tests.conftest import REPO, invoke_main, run_main, write_config, write_png_dataset

sys.path.insert(0, str(REPO / "scripts"))
from chromium import Browser  # noqa: E402

# What the page says about itself, read by the browser after loading.
PAGE_FACTS = """({
  images: Array.from(document.images).map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0})),
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  headings: Array.from(document.querySelectorAll('section > h2')).map(h => h.textContent),
  plots: document.querySelectorAll('.plotly-graph-div .main-svg').length,
  external: Array.from(document.querySelectorAll('script[src], link[href], img')).map(e => e.src || e.href)
            .filter(u => /^https?:/.test(u)),
})"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A project trained and evaluated with `--mode both` on 40 learnable 64-px images."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (40, 6))
    scores[rng.random((40, 6)) < 0.08] = 4
    write_png_dataset(root / "data", scores, size=64, patients=[f"P{i // 2}" for i in range(40)])
    write_config(root / "config" / "config.ini", root / "data", Training={"n_epochs": 2, "learning_rate": 0.003},
                 Data={"image_size": 64, "normalization": "simple"},
                 Evaluation={"saliency_largest_error": 2, "saliency_random": 2})
    both = run_main("--mode", "both", cwd=root)
    assert both.returncode == 0, both.stderr
    return root, next((root / "models").iterdir())


def read_page(chromium, path, screenshot):
    with Browser(chromium) as browser:
        browser.open(path)
        facts = browser.evaluate(PAGE_FACTS)
        png = browser.screenshot(screenshot)
        return facts, browser.errors, png


def test_evaluation_report_opens_offline_with_every_section(chromium, evaluated, tmp_path):
    _, run_dir = evaluated
    out = run_dir / "evaluation"
    facts, errors, png = read_page(chromium, out / "report.html", tmp_path / "report.png")
    assert errors == []
    assert facts["external"] == [], "the report must not fetch anything"
    mine = ["summary", "metrics", "confusion-matrices", "training-curves", "where-the-model-looked-grad-cam"]
    assert [s for s in facts["sections"] if s in mine] == mine  # other sections may come between
    assert all(image["loaded"] for image in facts["images"]), [i["alt"] for i in facts["images"] if not i["loaded"]]
    shown = [image["alt"] for image in facts["images"]]
    # Confusion matrices of zones, overall and AHF for val and test; the curves; 2 + 2 Grad-CAM strips.
    assert sorted(a for a in shown if a.startswith("confusion_")) == sorted(
        f"confusion_{kind}_{split}.png" for kind in ("zones", "overall", "ahf") for split in ("val", "test"))
    assert "training_curves.png" in shown
    strips = sorted(p.name for p in (out / "saliency").glob("*.png"))
    assert len(strips) == 4 and set(strips) <= set(shown)
    statistics = ["confidence-intervals", "agreement-of-the-csi", "calibration"]
    assert [s for s in facts["sections"] if s in statistics] == statistics
    assert {"agreement_test.png", "calibration_test.png"} <= set(shown)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page, not a blank


def test_explain_writes_an_overlay_per_image_and_an_index(chromium, evaluated, tmp_path):
    root, run_dir = evaluated
    pd.DataFrame({"FileID": ["1001", "1002", "1003"]}).to_csv(root / "few.csv", index=False)
    result = invoke_main("--mode", "explain", "--checkpoint", str(run_dir / "best_model.pth"), "--input",
                         "few.csv", "--output", "explained", cwd=root)
    assert result.exit_code == 0, result.output[-3000:]
    out = root / "explained"
    assert sorted(p.name for p in out.glob("*.png")) == ["1001.png", "1002.png", "1003.png"]
    table = pd.read_csv(out / "predictions.csv", dtype={"FileID": str})
    assert table["FileID"].tolist() == ["1001", "1002", "1003"] and "csi_pred" in table
    facts, errors, _ = read_page(chromium, out / "index.html", tmp_path / "index.png")
    assert errors == [] and len(facts["images"]) == 3 and all(i["loaded"] for i in facts["images"])
    assert facts["headings"] == ["Predicted scores", "Where the model looked (Grad-CAM)"]


def test_report_sections_embed_plotly_and_report_broken_pages(chromium, tmp_path):
    """The framework other sections build on: plotly's JS is inline (it renders offline), and the
    browser check does catch a broken image and a script error."""
    report = Report("Framework")
    figure = go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2], text=["a", "b", "c"]))
    report.add_section("Interactive", Plotly(figure, caption="hover me"),
                       Table(pd.DataFrame({"value": [1.23456, np.nan]}, index=list(ZONES[:2]))))
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    report.add_section("Interactive", Text("same title, another anchor"), Image.from_figure(fig, "matplotlib"))
    good = report.write(tmp_path / "good.html")
    facts, errors, _ = read_page(chromium, good, tmp_path / "good.png")
    assert errors == [] and facts["plots"] >= 1 and facts["external"] == []
    assert [i["loaded"] for i in facts["images"]] == [True]
    assert facts["sections"] == ["interactive", "interactive-2"]

    broken = Report("Broken")
    broken.add_section("Broken", Image(b"not a png", caption="broken"))
    path = broken.write(tmp_path / "broken.html")
    path.write_text(path.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))
    facts, errors, _ = read_page(chromium, path, tmp_path / "broken.png")
    assert [i["loaded"] for i in facts["images"]] == [False]
    assert any("undefinedFunction" in e for e in errors)
