"""The machinery of scripts/benchmark.py: measures, targets, alternation, child processes, reports."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measure:
    """One contender: what it is and its samples, one per round."""

    what: str
    samples: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_json(self) -> dict:
        return {"what": self.what, "median": self.median, "unit": self.unit, "samples": self.samples}


@dataclass(frozen=True)
class Target:
    """`subject` ("ratio" or "ours") `op` `bound`, e.g. ratio <= 1.03."""

    subject: str
    op: str
    bound: float
    why: str = ""  # shown beside the target, e.g. "10x faster"

    def met(self, value: float) -> bool:
        return {"<=": value <= self.bound, "<": value < self.bound, ">=": value >= self.bound}[self.op]

    def __str__(self) -> str:
        text = f"{self.subject} {self.op.replace('<=', '≤').replace('>=', '≥')} {self.bound:g}"
        return f"{text} ({self.why})" if self.why else text


@dataclass
class Row:
    """One comparison: ours against a baseline (None for a plain measurement), judged by a target."""

    name: str
    baseline: Measure | None
    ours: Measure
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        return self.ours.median / self.baseline.median if self.baseline else None

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.target.met(self.ratio if self.target.subject == "ratio" else self.ours.median)

    def as_json(self) -> dict:
        return {"name": self.name, "baseline": self.baseline.as_json() if self.baseline else None,
                "ours": self.ours.as_json(), "ratio": self.ratio,
                "target": str(self.target) if self.target else None, "met": self.met}


@dataclass
class Section:
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """What every comparison shares: quick or full sizes, a scratch directory, the demo data."""

    quick: bool
    scratch: Path
    demo: Path  # a directory holding labels.csv and images/, as `make demo` writes it

    @property
    def rounds(self) -> int:
        return 1 if self.quick else 3

    def size(self, full, quick):
        """`full` in a real run, `quick` in a --quick one."""
        return quick if self.quick else full


def alternate(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each contender once per round, the starting one rotating; its returned figure per round."""
    names, samples = list(contenders), {name: [] for name in contenders}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(contenders[name]())
    return samples


def seconds(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants (0 once it has gone)."""
    parents, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields["PPid"])
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    tree, frontier = set(), {pid}
    while frontier:
        tree |= frontier
        frontier = {p for p, parent in parents.items() if parent in frontier} - tree
    return sum(rss.get(p, 0) for p in tree)


@dataclass
class ChildRun:
    seconds: float
    peak_rss: int  # bytes, summed over the process and its children, sampled every 20 ms
    output: str


def run_child(args: list[str], cwd: Path, sample_memory: bool = False) -> ChildRun:
    """Run `args` to completion; fails loudly when the child does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    if sample_memory:
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.02)
    output = process.communicate()[0]
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {process.returncode}:\n{output[-3000:]}")
    return ChildRun(elapsed, peak, output)


def machine() -> dict:
    """The machine the figures belong to."""
    import torch

    from src.utils.device import cpu_has_fast_bf16, onednn_isa_cap

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        # What decides the CPU figures: the widest vector ISA and native bf16 (AMX, AVX-512-BF16), and
        # whether oneDNN was capped below them.
        "vector_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "onednn_max_cpu_isa": onednn_isa_cap() or None,
        "native_bf16": cpu_has_fast_bf16(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpu": ", ".join(gpus) if gpus else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def cpu_kind(about: dict) -> str:
    """The CPU's kind as the figures depend on it, e.g. 'flags avx2 avx512f avx512_bf16: native bf16'."""
    flags = " ".join(about["vector_flags"]) or "no avx2"
    cap = f", oneDNN capped at {about['onednn_max_cpu_isa']}" if about["onednn_max_cpu_isa"] else ""
    return f"flags {flags}{cap}: {'native bf16' if about['native_bf16'] else 'no native bf16 (fp32 only)'}"


def _format(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:,.3g} {unit}".strip() if abs(value) < 1000 else f"{value:,.0f} {unit}".strip()


def describe(measure: Measure | None) -> str:
    return f"{measure.what}: {_format(measure.median, measure.unit)}" if measure else "—"


def markdown(sections: list[Section], about: dict, quick: bool) -> str:
    gpu = about["gpu"] or "none: no GPU is lent to this machine, so the GPU comparisons were not run"
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`scripts/benchmark.py`); rerun it to reproduce. Each comparison ran in one",
        "process with its contenders alternating; figures are medians over the rounds, ratio = ours / baseline.",
        "On a shared CPU machine the ratios are the claims, not the absolute times.",
        "",
        "## Machine",
        "",
        f"- CPU: {about['cpu']}, {about['cores']} cores; {cpu_kind(about)}",
        f"- Memory: {about['memory_gib']} GiB",
        f"- GPU: {gpu}",
        f"- torch {about['torch']} ({about['torch_threads']} threads), Python {about['python']}, {about['os']}",
        "",
    ]
    if quick:
        lines += ["**--quick run: tiny sizes that only prove the benchmark runs; these figures mean nothing.**", ""]
    for section in sections:
        lines += [f"## {section.title}", "", "| comparison | baseline | ours | ratio | target | met |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in section.rows:
            ratio = f"{row.ratio:.3g}" if row.ratio is not None else "—"
            met = {True: "yes", False: "**no**", None: "—"}[row.met]
            lines.append(f"| {row.name} | {describe(row.baseline)} | {describe(row.ours)} | {ratio} | "
                         f"{row.target or '—'} | {met} |")
        lines += [""] + [f"- {note}" for note in section.notes] + ([""] if section.notes else [])
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class TimedLoader:
    """A loader whose consumer's waits for the next batch are summed in `wait` (seconds)."""

    def __init__(self, loader) -> None:
        self.loader, self.wait = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.wait += time.perf_counter() - started
            if batch is None:
                return
            yield batch
