"""Run loggers: metrics.csv (always), TensorBoard and Weights & Biases behind one small interface.

    with create_loggers(cfg, run_dir, resume, enabled=rank == 0) as loggers:
        for epoch in ...:
            loggers.log_epoch(epoch, {**train_metrics, **val_metrics})
            if improved:
                loggers.log_best_checkpoint(run_dir / BEST, epoch, val_metrics)

History keys map to the tags train/loss, val/f1_macro, lr, grad_norm, ... in TensorBoard and W&B.
wandb and tensorboard are imported only when enabled: importing them costs seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import secrets
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config.render import render_ini
from src.config.schema import Config
from src.utils.io import atomic_open, atomic_write_text
from src.utils.logging import logger
from src.utils.secrets import mask_secrets

if TYPE_CHECKING:
    import wandb

__all__ = ["create_loggers", "init_wandb_run", "resolve_wandb_mode", "wandb_config", "metric_tag", "RunLoggers"]


def metric_tag(key: str) -> str:
    """Name of a history key in TensorBoard and W&B: train_loss -> train/loss, val_qwk -> val/qwk, lr -> lr."""
    split, sep, name = key.partition("_")
    return f"{split}/{name}" if sep and split in ("train", "val") else key


class RunLogger:
    """The logger interface; each logger overrides what it records."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_best_checkpoint(self, path: Path, epoch: int, metrics: dict) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


class CSVLogger(RunLogger):
    """One row per epoch, columns the union of all keys; rewritten atomically after every epoch."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = path
        self.rows: list[dict] = []
        if resume and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                self.rows = list(csv.DictReader(handle))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        # A resumed run repeats the epochs after its checkpoint: their old rows give way.
        self.rows = [row for row in self.rows if int(float(row["epoch"])) < epoch]
        self.rows.append({"epoch": epoch, **{k: v for k, v in metrics.items() if k != "epoch"}})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        with atomic_open(self.path) as handle:
            writer = csv.DictWriter(handle, columns, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


class TensorBoardLogger(RunLogger):
    """Scalars per epoch (step = epoch) and the config as text, in event files under `log_dir`."""

    def __init__(self, log_dir: Path, config_text: str, resume: bool = False):
        self.log_dir, self.config_text, self.resume = log_dir, config_text, resume
        self.writer = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # Opened at the first epoch since a resumed run's purge_step, which hides the events it
            # is about to log again, is that epoch.
            self.writer = SummaryWriter(str(self.log_dir), purge_step=epoch if self.resume else None)
            if not self.resume:
                self.writer.add_text("config", textwrap.indent(self.config_text, "    "))  # Markdown code block
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(metric_tag(key), value, epoch)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbLogger(RunLogger):
    """Per-epoch metrics against an `epoch` axis, best metrics in the summary, best checkpoint as artifact."""

    def __init__(self, run: wandb.Run):
        self.run = run
        self.best: tuple[Path, int, dict] | None = None
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log({"epoch": epoch, **{metric_tag(k): v for k, v in metrics.items() if k != "epoch"}})

    def log_best_checkpoint(self, path: Path, epoch: int, metrics: dict) -> None:
        self.run.summary.update({"best_epoch": epoch, **{f"best/{k}": v for k, v in metrics.items() if k != "epoch"}})
        self.best = (path, epoch, metrics)

    def close(self, failed: bool = False) -> None:
        # The checkpoint goes up once, at the end, rather than at every improvement: it may weigh
        # hundreds of MB and W&B keeps a staged copy of each version until it is uploaded.
        if self.best is not None and self.best[0].is_file():
            import wandb

            path, epoch, metrics = self.best
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model",
                                      metadata={"epoch": epoch, **{k: v for k, v in metrics.items() if k != "epoch"}})
            artifact.add_file(str(path), name=path.name)
            self.run.log_artifact(artifact, aliases=["best", f"epoch-{epoch}"])
        self.run.finish(exit_code=1 if failed else 0)


class RunLoggers(RunLogger):
    """The loggers of one training run; a context manager that closes them (marking a W&B run failed
    when the block raised)."""

    def __init__(self, loggers: list[RunLogger]):
        self.loggers = loggers

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for each in self.loggers:
            each.log_epoch(epoch, metrics)

    def log_best_checkpoint(self, path: Path, epoch: int, metrics: dict) -> None:
        """Record the newest best checkpoint (W&B uploads the last one recorded when closed)."""
        for each in self.loggers:
            each.log_best_checkpoint(Path(path), epoch, metrics)

    def close(self, failed: bool = False) -> None:
        loggers, self.loggers = self.loggers, []  # closing twice is harmless
        for each in loggers:
            each.close(failed)

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(failed=exc_type is not None)


def wandb_config(cfg: Config) -> dict[str, dict[str, Any]]:
    """The config as {"Training": {"batch_size": 32, ...}, ...}, which W&B shows as Training.batch_size
    (W&B asks for config keys without dots, so the sections nest rather than flatten)."""
    return {f.name.capitalize(): {key: mask_secrets(value) if isinstance(value, str) else value
                                  for key, value in dataclasses.asdict(getattr(cfg, f.name)).items()}
            for f in dataclasses.fields(cfg)}


def resolve_wandb_mode(mode: str) -> str:
    """online / offline as configured; auto: WANDB_MODE when set, else online when W&B credentials are
    configured (WANDB_API_KEY, .netrc or W&B settings), else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    # Looks where wandb.init looks, but unlike wandb.login never contacts the server (which login
    # does to name the user, and which takes long to fail without a network).
    settings = wandb_setup.singleton().settings
    auth = wbauth.authenticate_session(host=settings.base_url, source="csi-predictor", prompt=False,
                                       update_session=False)
    return "online" if auth else "offline"


def init_wandb_run(cfg: Config, name: str, group: str | None, config: dict, directory: Path,
                   run_id: str | None = None) -> wandb.Run | None:
    """Start a W&B run per [Logging], or return None when wandb_project is empty.

    Files go under `directory` (or $WANDB_DIR when set); `run_id` continues that run if it exists. With
    wandb_mode = auto, a server that cannot be reached means an offline run, not a failed training.
    """
    if not cfg.logging.wandb_project:
        return None
    import wandb

    mode = resolve_wandb_mode(cfg.logging.wandb_mode)
    options = dict(project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity or None, name=name,
                   group=group, config=config, dir=None if os.environ.get("WANDB_DIR") else directory, id=run_id,
                   resume="allow" if run_id else None,
                   reinit="create_new")  # hyperopt may run trials, each with a run, in parallel threads
    if options["dir"] is not None:
        directory.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(mode=mode, **options)
    except wandb.Error as error:
        if cfg.logging.wandb_mode != "auto" or mode != "online":
            raise
        logger.warning(f"W&B server unreachable ({error}); logging this run offline instead")
        run = wandb.init(mode="offline", **options)
    if run.offline:
        logger.info(f"W&B run {run.name} logged offline in {run.settings.sync_dir}; upload it with "
                    f"`wandb sync {run.settings.sync_dir}`")
    return run


def _wandb_run_id(logs: Path, resume: bool) -> str:
    """The run's W&B id, kept in logs/wandb_run_id so that a resumed run continues the same W&B run."""
    path = logs / "wandb_run_id"
    if resume and path.is_file():
        return path.read_text().strip()
    # The random suffix keeps apart runs of equal directory names on machines sharing a W&B project.
    run_id = re.sub(r"[^\w.-]", "-", logs.parent.name) + f"-{secrets.token_hex(4)}"
    atomic_write_text(path, run_id + "\n")
    return run_id


def create_loggers(cfg: Config, run_dir: Path, resume: bool = False, enabled: bool = True) -> RunLoggers:
    """The loggers [Logging] asks for, writing under run_dir/logs; `enabled=False` (ranks other than 0 of a
    distributed run) gives loggers that record nothing. `resume` continues the run's files."""
    if not enabled:
        return RunLoggers([])
    logs = run_dir / "logs"
    loggers: list[RunLogger] = [CSVLogger(logs / "metrics.csv", resume)]
    if cfg.logging.tensorboard:
        loggers.append(TensorBoardLogger(logs / "tensorboard", render_ini(cfg, documented=False), resume))
    if cfg.logging.wandb_project:
        run = init_wandb_run(cfg, run_dir.name, None, wandb_config(cfg), logs, _wandb_run_id(logs, resume))
        loggers.append(WandbLogger(run))
    return RunLoggers(loggers)
