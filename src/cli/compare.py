"""compare mode: two runs on the same test images, as a table and files under <output_dir>/comparisons/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pandas as pd

from src.config.schema import Config
from src.data.zones import ZONES
from src.engine.metrics import HEADLINE_METRICS
from src.evaluation.bootstrap import BootstrapSettings
from src.evaluation.compare import compare_runs, write_comparison
from src.utils.errors import CSIError


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def run_compare(cfg: Config, options: dict[str, Any]) -> None:
    runs = options.get("runs") or ()
    if len(runs) != 2:
        raise CSIError(f"compare needs two runs: --run A --run B (got {len(runs)})")
    a, b = (Path(r) for r in runs)
    evaluation = cfg.evaluation
    settings = BootstrapSettings(evaluation.bootstrap_samples, evaluation.bootstrap_seed)
    comparison = compare_runs(a, b, settings, (evaluation.ahf_low_threshold, evaluation.ahf_high_threshold))
    out = Path(cfg.training.output_dir) / "comparisons" / f"{a.name}__vs__{b.name}"
    write_comparison(comparison, settings, out)
    d = comparison.differences.set_index("metric").loc[[m for m in HEADLINE_METRICS if not m.endswith(ZONES)]]
    table = pd.DataFrame({"A": d["A"].round(4), "B": d["B"].round(4),
                          "B - A [95% CI]": [f"{r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                                             for r in d.itertuples()],
                          "p": d["p_value"].map(_p)})
    click.echo(f"A = {a}\nB = {b}\npaired bootstrap over {comparison.units}, {settings.samples} resamples")
    click.echo(table.to_string())
    m = comparison.mcnemar.set_index("scope")
    click.echo("McNemar (known-target zones right by only one run):")
    click.echo(pd.DataFrame({"zones": m["zones"], "only A right": m["only_A_right"],
                             "only B right": m["only_B_right"], "p": m["p_value"].map(_p)}).to_string())
    click.echo(f"written to {out}")
