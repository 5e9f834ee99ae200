"""The local agent: claim a run, start it as its own process, wait, repeat until told to stop.

Stops after `count` runs, when the sweep has no run left (a finished grid, run_cap reached) or
when a run has reached metric.target. Each run is its own process, so all its memory, GPU memory
included, is released when it ends. Runs are spawned (a fresh interpreter, a few seconds of
imports), not forked: a fork of the agent, whose thread pools (OpenMP, W&B's telemetry) may be
running, can crash or hang in the child. The agent decodes the images into the on-disk cache once;
each run reads them back from it. The run dies with its agent, and the next
agent queues it again. The agent beats the run's heartbeat while it waits.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys

import click
import optuna
from optuna.storages import BaseStorage, RDBStorage

from src.config.schema import Config
from src.optimization.objective import SharedDatasets, keep_best_checkpoints
from src.optimization.runner import require_worker_processes
from src.optimization.study import HEARTBEAT_S, display_location
from src.sweeps.local import (
    claim_run,
    end_unfinished,
    open_sweep,
    recover,
    start_run,
    storage_config,
    target_reached,
)
from src.sweeps.outputs import describe_run, summary, sweep_dir, write_outputs
from src.sweeps.run import train_trial
from src.sweeps.spec import SweepSpec
from src.utils.logging import logger


def _die_with_parent() -> None:
    """Have the kernel kill this process when the agent dies (Linux), so no run outlives its agent."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run(cfg: Config, sweep_id: str, number: int) -> None:
    _die_with_parent()
    try:
        train_trial(cfg, sweep_id, number, SharedDatasets())
    except KeyboardInterrupt:
        sys.exit(130)


def run_in_process(cfg: Config, sweep_id: str, number: int, store: BaseStorage, trial_id: int) -> int:
    """Train run `number` in a child process; beats its heartbeat while waiting; its exit code."""
    process = multiprocessing.get_context("spawn").Process(target=_run, args=(cfg, sweep_id, number))
    process.start()
    try:
        while process.exitcode is None:
            process.join(timeout=HEARTBEAT_S)
            if process.exitcode is None and isinstance(store, RDBStorage):
                store.record_heartbeat(trial_id)
    except KeyboardInterrupt:  # the run got the same Ctrl-C: let it record itself and stop
        process.join()
        raise
    return process.exitcode


def run_agent(cfg: Config, sweep_id: str, count: int | None = None) -> tuple[optuna.Study, SweepSpec]:
    """Run `count` runs of the sweep (all it has left when None); writes the outputs after each."""
    require_worker_processes(cfg, "sweep-agent")
    study, spec, store = open_sweep(cfg, sweep_id)
    out = sweep_dir(cfg, sweep_id)
    bands = [b for b in spec.hyperband.bands if b <= cfg.training.n_epochs] if spec.hyperband else []
    logger.info(f"Sweep {sweep_id} in {display_location(storage_config(cfg, sweep_id))}: {spec.method} over "
                f"{', '.join(p.key for p in spec.params)}; {spec.metric} ({spec.goal})"
                + (f", hyperband at epochs {', '.join(map(str, bands))}" if spec.hyperband else "")
                + (f", run_cap {spec.run_cap}" if spec.run_cap else "")
                + (f", target {spec.target:g}" if spec.target is not None else ""))
    SharedDatasets().get(cfg)  # decodes the images into the on-disk cache once; every run reads it back
    done, interrupted, trial = 0, False, None
    try:
        while count is None or done < count:
            recover(study, store)
            reached = target_reached(study, spec)
            if reached is not None:
                logger.info(f"run {reached.number} reached metric.target {spec.target:g}: the sweep is finished")
                break
            trial = claim_run(study, spec, store)
            if trial is None:
                logger.info(f"Sweep {sweep_id} has no run left ("
                            + ("grid complete)" if spec.method == "grid" else f"run_cap {spec.run_cap} reached)"))
                break
            trial_id = start_run(study, spec, store, trial)
            code = run_in_process(cfg, sweep_id, trial.number, store, trial_id)
            end_unfinished(study, store, trial.number, f"the run's process exited with code {code}")
            done += 1
            keep_best_checkpoints(study)
            logger.info(describe_run(study, spec, store.get_trial(trial_id)))
            write_outputs(study, spec, out, plots=False)  # the plots once, at the end
    except KeyboardInterrupt:
        interrupted = True
        if trial is not None:
            end_unfinished(study, store, trial.number, "interrupted (Ctrl-C)")
        logger.warning("Interrupted: finished runs are stored; start an agent again to go on")
    write_outputs(study, spec, out)
    click.echo(summary(study, spec))
    if interrupted:
        raise SystemExit(130)
    return study, spec
