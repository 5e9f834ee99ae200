"""scripts/gpu_check.py (make gpu-check) as real processes: without CUDA it says so and writes nothing;
with --device cpu --quick it runs every stage on the CPU and reports each one in docs-style md/json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
CUDA_ONLY = {"fp16", "sync"}


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # CUDA_VISIBLE_DEVICES="" hides any GPU: the check must behave as on a machine without one.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_without_cuda_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "docs"
    done = run(["--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [done.stdout.strip()]
    assert "no CUDA device" in done.stdout and "nothing written" in done.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_cpu_check_runs_every_stage_and_reports_each(tmp_path):
    out = tmp_path / "report"
    done = run(["--device", "cpu", "--quick", "--skip", "compile", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    stages = {record["stage"]: record for record in report["stages"]}
    assert report["machine"]["device"].startswith("CPU: ") and report["machine"]["gpu"] is None
    assert report["quick"] is True
    assert set(stages) == {"data", "fp32", "bf16", "fp16", "auto", "interrupt", "eval", "predict", "export",
                           "hyperopt", "loader", "pipeline", "sync", "speed_custom_cnn", "compile"}
    for name, record in stages.items():
        expected = ("skipped", "skipped: needs CUDA") if name in CUDA_ONLY else (
            ("skipped", "skipped: --skip") if name == "compile" else ("pass", None))
        assert (record["status"], record.get("error")) == expected, record
    assert stages["interrupt"]["figures"]["exit_code"] == 130
    assert stages["interrupt"]["figures"]["resumed_epochs"] == [1, 2, 3]
    assert stages["hyperopt"]["figures"]["trials"] == {"COMPLETE": 2}
    assert stages["export"]["figures"]["max_probability_difference_vs_pytorch"] <= 1e-4
    assert stages["predict"]["figures"]["images"] == stages["data"]["figures"]["images"]
    assert stages["speed_custom_cnn"]["figures"]["fp16"] == "skipped: needs CUDA"
    assert stages["pipeline"]["figures"]["efficiency"] > 0
    assert "peak_gpu_memory_mib" not in json.dumps(report)  # no GPU figure from a CPU

    text = (out / "gpu.md").read_text()
    assert f"Device: {report['machine']['device']}" in text and "--quick run" in text
    for name, record in stages.items():
        assert f"| {name}: " in text and f"| {record['status']} |" in text
    assert "pipeline efficiency" in text  # the targets table
    assert "15 of 15 stages passed or skipped" in done.stdout
    assert not list(out.glob(".*partial"))  # written atomically
