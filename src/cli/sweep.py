"""sweep, sweep-agent and sweep-run modes: W&B sweep files, run on W&B's server or locally on Optuna.

`--mode sweep` checks the sweep file and creates the sweep, printing its id and the agent command;
`--mode sweep-agent` runs runs of it; `--mode sweep-run` is one run as W&B's agent starts it.
`--backend auto` uses W&B when a W&B API key is configured and its server answers, else the local
backend, and says which and why.
"""

from __future__ import annotations

from typing import Any

import click

from src.config.schema import Config
from src.sweeps import local, wandb_backend
from src.sweeps.agent import run_agent
from src.sweeps.spec import load_sweep
from src.utils.errors import ConfigError
from src.utils.logging import logger

DEFAULT_SWEEP_FILE = "config/sweep.yaml"


def choose_backend(requested: str, cfg: Config, sweep_id: str | None = None) -> str:
    """'wandb' or 'local' per --backend; auto prefers a sweep stored here, then a reachable W&B."""
    if requested != "auto":
        logger.info(f"Sweep backend {requested} (--backend {requested})")
        return requested
    if sweep_id is not None and (local.journal_exists(cfg, sweep_id) or cfg.hyperopt.storage):
        where = "--storage" if cfg.hyperopt.storage else f"logs/sweeps/{sweep_id}.log"
        logger.info(f"Sweep backend local: sweep {sweep_id} is stored in {where}")
        return "local"
    usable, why = wandb_backend.wandb_reachable()
    backend = "wandb" if usable else "local"
    logger.info(f"Sweep backend {backend}: {why}" + ("" if usable else "; running on Optuna here"))
    return backend


def _agent_command(sweep_id: str, backend: str, cfg: Config, config_path: str) -> str:
    parts = ["python main.py --mode sweep-agent", f"--sweep-id {sweep_id}", "--count 10"]
    if config_path != "config/config.ini":
        parts.append(f"--config {config_path}")
    if backend == "wandb":
        parts.append("--backend wandb")
    elif cfg.hyperopt.storage:
        parts.append("--storage <the same storage URL>")
    return " ".join(parts)


def run_sweep(cfg: Config, options: dict[str, Any]) -> str:
    """Create the sweep from --sweep-config (default config/sweep.yaml); returns its id."""
    path = options.get("sweep_config") or DEFAULT_SWEEP_FILE
    spec = load_sweep(path, cfg)  # refused here, before anything is created
    backend = choose_backend(options.get("backend") or "auto", cfg)
    if backend == "wandb":
        sweep_id = wandb_backend.create_wandb_sweep(
            spec, options["config_path"], options.get("project") or spec.project or cfg.logging.wandb_project,
            options.get("entity") or spec.entity or cfg.logging.wandb_entity)
    else:
        sweep_id = local.new_sweep_id(spec, options.get("sweep_name"))
        local.create_sweep(cfg, spec, sweep_id)
    click.echo(f"Sweep id       {sweep_id}")
    click.echo(f"Start agents   {_agent_command(sweep_id, backend, cfg, options['config_path'])}")
    return sweep_id


def run_sweep_agent(cfg: Config, options: dict[str, Any]) -> None:
    sweep_id = options.get("sweep_id")
    if not sweep_id:
        raise ConfigError("--mode sweep-agent needs --sweep-id ID (printed by --mode sweep)")
    count = options.get("count")
    if choose_backend(options.get("backend") or "auto", cfg, sweep_id) == "wandb":
        wandb_backend.run_wandb_agent(cfg, sweep_id, count, options.get("project") or cfg.logging.wandb_project,
                                      options.get("entity") or cfg.logging.wandb_entity)
        return
    run_agent(cfg, sweep_id, count)


def run_sweep_run(cfg: Config, options: dict[str, Any]) -> None:
    """One run of a W&B sweep, as W&B's agent starts it: --sweep-config FILE --name=value ..."""
    if not options.get("sweep_config"):
        raise ConfigError("--mode sweep-run is what a W&B sweep agent starts: it needs --sweep-config FILE "
                          "and the run's --name=value arguments")
    wandb_backend.train_wandb_run(cfg, options["sweep_config"], list(options.get("extra_args", ())))
