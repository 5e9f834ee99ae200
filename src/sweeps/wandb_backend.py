"""The wandb backend: W&B's server runs the sweep (`wandb.sweep`), W&B's agent starts the runs.

The agent runs the sweep's `command` once per run, each in its own process: by default
`python main.py --mode sweep-run --config <ini> --sweep-config <yaml> --name=value ...`, the
values arriving as W&B's `${args}` and, typed, in `wandb.config`. The run checks the sweep file
again, applies the values onto config.ini with the usual validation and trains, logging every
epoch (the sweep metric under its own name, which the server's bayes and hyperband read), the
resolved config and the best checkpoint as an artifact. The server's hyperband stops runs.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import optuna
import yaml
from optuna.trial import TrialState

from src.config.schema import Config
from src.sweeps.outputs import summary, sweep_dir, write_outputs
from src.sweeps.run import parse_agent_args, run_config, train_run
from src.sweeps.spec import SweepSpec, load_sweep, values_by_key
from src.training.loggers import resolve_wandb_mode
from src.utils.errors import ConfigError, first_line
from src.utils.io import atomic_write_text
from src.utils.logging import logger
from src.utils.run_dir import create_run_dir

_PROBE_TIMEOUT_S = 5
RESULT_FILE = "sweep_run.json"  # a W&B run's outcome, left in its run directory


def wandb_reachable() -> tuple[bool, str]:
    """(usable, why): W&B credentials are configured and the W&B server answers."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if resolve_wandb_mode("auto") != "online":
        return False, "no W&B API key is configured (wandb login, WANDB_API_KEY or .netrc)"
    from wandb.sdk import wandb_setup

    base_url = wandb_setup.singleton().settings.base_url
    try:
        urllib.request.urlopen(base_url, timeout=_PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        pass  # the server answered, if only to refuse an anonymous page
    except (urllib.error.URLError, OSError) as exc:
        return False, f"the W&B server {base_url} does not answer ({getattr(exc, 'reason', exc)})"
    return True, f"a W&B API key is configured and {base_url} answers"


def _program() -> str:
    """main.py as the agent's working directory reaches it (relative when it lies below)."""
    main = Path(__file__).resolve().parents[2] / "main.py"
    try:
        return str(main.relative_to(Path.cwd()))
    except ValueError:
        return str(main)


def sweep_config(spec: SweepSpec, config_path: str) -> dict[str, Any]:
    """The dict given to wandb.sweep: the file as written, with the program and command that start
    `--mode sweep-run` filled in where the file leaves them out."""
    doc = yaml.safe_load(spec.text)
    doc.setdefault("program", _program())
    doc.setdefault("command", ["${env}", "${interpreter}", "${program}", "--mode", "sweep-run", "--config",
                               config_path, "--sweep-config", spec.path, "${args}"])
    doc.setdefault("metric", {"name": spec.metric, "goal": spec.goal})
    return doc


def create_wandb_sweep(spec: SweepSpec, config_path: str, project: str, entity: str) -> str:
    import wandb

    return wandb.sweep(sweep_config(spec, config_path), project=project or None, entity=entity or None)


def run_wandb_agent(cfg: Config, sweep_id: str, count: int | None, project: str, entity: str) -> None:
    """W&B's agent with no function: each run is the sweep's command, its own process. Then the
    outputs of the runs made here."""
    import wandb

    wandb.agent(sweep_id, count=count, project=project or None, entity=entity or None)
    collect_wandb_runs(cfg, sweep_id)


def _wandb_values(run, spec: SweepSpec) -> dict[str, Any]:
    """The sweep's values found in wandb.config, by parameter name (nested ones under their section)."""
    values = {}
    for p in spec.params:
        head, _, leaf = p.name.partition(".")
        if p.name in run.config:
            values[p.name] = run.config[p.name]
        elif leaf and isinstance(run.config.get(head), dict) and leaf in run.config[head]:
            values[p.name] = run.config[head][leaf]
    return values


def train_wandb_run(cfg: Config, sweep_file: str, args: list[str]) -> None:
    """What a W&B agent's run process does (`--mode sweep-run --sweep-config FILE --name=value ...`)."""
    import wandb

    spec = load_sweep(sweep_file, cfg)  # checked again before anything trains
    values = parse_agent_args(args, f"{sweep_file}: W&B agent arguments")
    values_by_key(spec, values)  # a name the sweep does not have fails before any run starts
    run = wandb.init(project=spec.project or cfg.logging.wandb_project or None,
                     entity=spec.entity or cfg.logging.wandb_entity or None,
                     mode=resolve_wandb_mode(cfg.logging.wandb_mode))
    try:
        values.update(_wandb_values(run, spec))  # wandb.config carries the values typed
        by_key = values_by_key(spec, values)
        missing = [p.name for p in spec.params if p.key not in by_key and p.distribution != "constant"]
        if missing:
            raise ConfigError(f"{sweep_file}: W&B gave this run no value for parameter {missing[0]}")
        by_key.update({p.key: p.args["value"] for p in spec.params if p.distribution == "constant"
                       and p.key not in by_key})
        sweep_id = os.environ.get("WANDB_SWEEP_ID") or run.sweep_id or "wandb"
        run_cfg = run_config(cfg, spec, sweep_id, by_key, f"run-{run.id}")
    except ConfigError:
        run.finish(exit_code=2)
        raise
    provenance = f"W&B sweep {sweep_id}, run {run.id}: " + ", ".join(f"{k} = {v}" for k, v in by_key.items())
    logger.info(provenance)
    run_dir = create_run_dir(run_cfg.training.output_dir, run_cfg.model.model_arch, run_cfg.training.run_name)
    record = {"run": run.id, "metric": spec.metric, "goal": spec.goal, "values": by_key,
              "run_dir": str(run_dir.resolve())}
    try:
        _, best = train_run(run_cfg, spec, provenance, run, run_dir=run_dir)
    except Exception as exc:
        atomic_write_text(run_dir / RESULT_FILE, json.dumps({**record, "state": "failed",
                                                              "fail_reason": first_line(exc)}))
        raise
    atomic_write_text(run_dir / RESULT_FILE, json.dumps({**record, "state": "finished", "value": best}))


def collect_wandb_runs(cfg: Config, sweep_id: str) -> Path | None:
    """runs.csv and best_params.json of the W&B sweep's runs made on this machine (each run leaves its
    outcome in its run directory); None when there is none. W&B's dashboard holds the plots."""
    out = sweep_dir(cfg, sweep_id.split("/")[-1])
    records = [json.loads(p.read_text()) for p in sorted(out.glob(f"runs/*/{RESULT_FILE}"))]
    if not records:
        return None
    spec = SweepSpec(path="", text="", method="", metric=records[0]["metric"], goal=records[0]["goal"],
                     target=None, params=())
    study = optuna.create_study(study_name=sweep_id, direction=spec.direction)
    for r in records:
        finished = r["state"] == "finished"
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if finished else TrialState.FAIL, value=r["value"] if finished else None,
            user_attrs={"config": r["values"], "run_dir": r["run_dir"], "wandb_run": r["run"],
                        **({} if finished else {"fail_reason": r["fail_reason"]})}))
    write_outputs(study, spec, out, plots=False)
    click.echo(summary(study, spec))
    return out
