"""scripts/benchmark.py --quick: every comparison runs and both reports are written (no timing is judged)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

# search, memory, masks and finetune start several trainings: see the long test
FAST = "loop,data,precision,startup,onnx,backbones,gpu,cache"


def _run_quick(tmp_path, dataset, only: str) -> dict:
    out = tmp_path / "docs"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--only", only,
                             "--out", str(out), "--demo", str(dataset)], capture_output=True, text=True,
                            timeout=900, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "benchmarks.json").read_text())
    markdown = (out / "benchmarks.md").read_text()
    assert report["quick"] is True and "--quick run" in markdown
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["cpu"]
    assert f"- CPU: {machine['cpu']}" in markdown and f"torch {machine['torch']}" in markdown
    for row in report["comparisons"]:
        assert set(row) == {"name", "baseline", "ours", "ratio", "target", "met"}
        assert row["ours"]["samples"] and row["ours"]["median"] == row["ours"]["median"]  # a number, not NaN
        if row["baseline"] is None:
            assert row["ratio"] is None
        else:
            assert row["ratio"] == pytest.approx(row["ours"]["median"] / row["baseline"]["median"])
        assert (row["met"] is None) == (row["target"] is None)
        assert f"| {row['name']} |" in markdown
    return report


def test_quick_benchmark_writes_every_fast_comparison(tmp_path, tiny_dataset):
    report = _run_quick(tmp_path, tiny_dataset, FAST)
    names = " ".join(row["name"] for row in report["comparisons"])
    for expected in ("epoch time, custom_cnn", "same losses", "training epoch", "loader wait", "cache build",
                     "bf16 + channels_last vs fp32", "precision = auto picks", "python main.py --help",
                     "--mode check", "batch 2: images/s", "training images/s, bf16", "peak RSS of the training",
                     "killed at half its shards", "(1%) to the", "labels file of 1,000 rows"):
        assert expected in names
    if report["machine"]["gpu"] is None:
        assert "no GPU" in (tmp_path / "docs" / "benchmarks.md").read_text()


@pytest.mark.long
def test_quick_benchmark_runs_the_search_memory_masks_and_finetune_comparisons(tmp_path, tiny_dataset):
    report = _run_quick(tmp_path, tiny_dataset, "search,memory,masks,finetune")
    names = " ".join(row["name"] for row in report["comparisons"])
    for expected in ("wall time", "best validation macro F1", "first training batch", "demo training",
                     "cache build of", "predict on", "six masked passes", "pose-varied demo", "one feature pass",
                     "heads on cached features", "study of head settings", "test macro F1"):
        assert expected in names
