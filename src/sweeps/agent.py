"""The local agent: claim a run, start it as its own process, wait, repeat until told to stop.

Stops after `count` runs, when the sweep has no run left (a finished grid, run_cap reached) or
when a run has reached metric.target. Each run is its own process, so all its memory, GPU memory
included, is released when it ends. Runs are not forked from the agent: a fork of a process whose
thread pools (OpenMP, W&B's telemetry) may be running can crash or hang in the child. Nor are they
spawned as fresh interpreters, which import torch anew (about 6 s a run on a small CPU). They are
forked from multiprocessing's fork server, a process that has only imported the training code, runs
no thread pool and never touches a GPU. The agent decodes the images into the on-disk cache once;
each run reads them back from it. The run dies with its agent, and the next
agent queues it again. The agent beats the run's heartbeat while it waits.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import sys
import threading

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

_RUNS = multiprocessing.get_context("forkserver")
# What every run imports, torch's compiler included (its optimizers import it on first use).
_RUNS.set_forkserver_preload(["src.sweeps.run", "torch._dynamo"])


def _die_with_agent() -> None:
    """Kill this run the moment its agent is gone, so no run outlives it. The kernel's parent-death
    signal would wait for the fork server, the run's parent, whose own exit takes seconds: a thread
    waits instead on the pipe from the agent, which the kernel closes when the agent dies."""
    agent = multiprocessing.parent_process()

    def wait_for_the_agent() -> None:
        multiprocessing.connection.wait([agent.sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait_for_the_agent, name="die-with-agent", daemon=True).start()


def _run(cfg: Config, sweep_id: str, number: int) -> None:
    _die_with_agent()
    try:
        train_trial(cfg, sweep_id, number, SharedDatasets())
    except KeyboardInterrupt:
        sys.exit(130)


def run_in_process(cfg: Config, sweep_id: str, number: int, store: BaseStorage, trial_id: int) -> int:
    """Train run `number` in a child process; beats its heartbeat while waiting; its exit code."""
    process = _RUNS.Process(target=_run, args=(cfg, sweep_id, number))
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
    multiprocessing.forkserver.ensure_running()  # it imports the training code while the images decode
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
