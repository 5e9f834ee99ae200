"""`python main.py --mode MODE`: parse the command line, load the config, dispatch to a mode."""

from __future__ import annotations

import importlib
import shlex
import sys
from typing import Any

import click

from src.config.loader import load_config
from src.config.schema import section_fields, section_names
from src.utils.errors import CSIError, TrainingInterrupted
from src.utils.logging import add_file_log, logger, setup_logging
from src.utils.secrets import mask_secrets

# mode -> (handler "module:function", one line of help). A mode is listed here once it works.
MODES: dict[str, tuple[str, str]] = {
    "train": ("src.cli.train:run_train", "train per the config; prints the run directory and best metrics"),
    "eval": ("src.cli.evaluate:run_eval",
             "evaluate a run's checkpoint on its val and test splits (--run DIR | --checkpoint FILE); "
             "several, or --run models/cv/<name>: an ensemble beside each member; --labels FILE: an external set"),
    "both": ("src.cli.evaluate:run_both", "train, then evaluate the new run"),
    "predict": ("src.cli.predict:run_predict",
                "score new images: --input DIR|CSV --output FILE.csv [--checkpoint FILE | --run DIR]..."),
    "hyperopt": ("src.cli.hyperopt:run_hyperopt",
                 "search hyperparameters with Optuna ([Hyperopt]; --n-trials, --storage, ...)"),
    "train-optimized": ("src.cli.hyperopt:run_train_optimized",
                        "train with the best hyperparameters: --hyperparams best_params.json | --study-name"),
    "explain": ("src.cli.explain:run_explain",
                "per-zone Grad-CAM overlays and index.html: --input DIR|CSV --output DIR [--checkpoint FILE]"),
    "export": ("src.cli.export:run_export",
               "write a checkpoint as ONNX or TorchScript with its preprocessing: --checkpoint FILE --format F"),
    "compare": ("src.cli.compare:run_compare",
                "two runs on the same test images: paired bootstrap differences, McNemar per zone (--run A --run B)"),
    "cv": ("src.cli.cv:run_cv", "k-fold cross-validation grouped by patient (--folds K); rerun to continue"),
    "models": ("src.cli.models:run_models",
               "list every backbone: parameters, sizes, weight sources and whether they are cached; --measure: "
               "training img/s here"),
    "check": ("src.cli.check:run_check",
              "validate config, labels and every image (building the cache); print a summary; --preview N: a "
              "contact sheet of N images as the model receives them"),
    "sweep": ("src.cli.sweep:run_sweep",
              "create a W&B sweep from --sweep-config (default config/sweep.yaml); prints the agent command"),
    "sweep-agent": ("src.cli.sweep:run_sweep_agent",
                    "run runs of a sweep: --sweep-id ID [--count N] [--backend auto|wandb|local]"),
    "sweep-run": ("src.cli.sweep:run_sweep_run", "one run of a W&B sweep, as W&B's agent starts it"),
}
SWEEP_RUN = "sweep-run"  # the one mode that takes W&B's --name=value arguments


ENSEMBLE_MODES = ("eval", "predict")  # modes that take several --run/--checkpoint (compare: two --run)


def _schema_flags(command):
    """Add a dedicated flag for each schema key that declares one (e.g. --epochs)."""
    flagged = [(section, name, fld) for section in section_names()
               for name, fld in section_fields(section).items() if fld.metadata["flag"]]
    for section, name, fld in reversed(flagged):  # decorators apply bottom-up; keep schema order
        metavar = "|".join(fld.metadata["choices"] or ()) or {"int": "INT", "float": "NUMBER"}.get(fld.type, "TEXT")
        command = click.option(fld.metadata["flag"], f"{section}__{name}", default=None, metavar=metavar,
                               help=f"[{section}] {name}: {fld.metadata['help']}")(command)
    return command


DEFAULT_CONFIG = "config/config.ini"
_MODE_HELP = "\b\nModes:\n" + "\n".join(f"  {m:<16} {h}" for m, (_, h) in MODES.items())


@click.command(epilog=_MODE_HELP, context_settings={"help_option_names": ["-h", "--help"],
                                                    "max_content_width": 110, "ignore_unknown_options": True,
                                                    "allow_extra_args": True})
@click.pass_context
@click.option("--mode", type=click.Choice(list(MODES)), required=True, help="What to do (see Modes below).")
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              help="INI file with the run's configuration.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config key; repeatable. Beats environment variables and the INI file.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Console verbosity; debug also shows tracebacks.")
@click.option("--run", "runs", type=click.Path(file_okay=False), multiple=True,
              help="eval/predict: a run directory (default: latest), or a cross-validation directory for all "
                   "its folds; repeatable (an ensemble). compare: given twice, A then B.")
@click.option("--checkpoint", "checkpoints", type=click.Path(dir_okay=False), multiple=True,
              help="eval/predict: a checkpoint file; repeatable (an ensemble).")
@click.option("--labels", "labels", type=click.Path(dir_okay=False), multiple=True,
              help="eval: score an external labelled set (its images in --image-dir, masks in --masks) beside the "
                   "internal test split; repeatable: one file per reader.")
@click.option("--name", help="eval --labels: the external set's name, its folder under evaluation/ (default: the "
                             "labels file's name).")
@click.option("--allow-overlap", is_flag=True,
              help="eval --labels: score images the model trained or was validated on instead of refusing them.")
@click.option("--preview", type=click.IntRange(min=1), metavar="N",
              help="check: write a contact sheet of N images as the model receives them (zones and labels shown).")
@click.option("--input", "input", type=click.Path(), help="predict: a folder of images or a CSV of FileIDs.")
@click.option("--output", type=click.Path(),
              help="predict: CSV to write (default predictions.csv); explain: folder to write; export: the model "
                   "file (default: beside the checkpoint); check --preview: the PNG (default preview.png).")
@click.option("--format", "format", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="export: the file format.")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="predict: score with PyTorch and a checkpoint, or with onnxruntime and an exported .onnx model.")
@click.option("--resume", type=click.Path(),
              help="train: continue a run in place from RUN_DIR (its last_model.pth) or a checkpoint.")
@click.option("--fast-dev-run", is_flag=True, help="train: one batch of train and val, nothing written.")
@click.option("--overfit-batches", type=click.IntRange(min=1), metavar="N",
              help="train: fit and validate on the first N training batches (debugging).")
@click.option("--measure", is_flag=True, help="models: also time training steps of each backbone (img/s).")
@click.option("--hyperparams", type=click.Path(dir_okay=False),
              help="train-optimized: best_params.json written by hyperopt.")
@click.option("--sweep-config", type=click.Path(dir_okay=False),
              help="sweep: the W&B sweep file (default config/sweep.yaml).")
@click.option("--sweep-name", help="sweep: name (and, on the local backend, id) of the new sweep.")
@click.option("--sweep-id", help="sweep-agent: the sweep to run, as printed by --mode sweep.")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="sweep-agent: runs to do (default: until the sweep is exhausted or stopped).")
@click.option("--backend", type=click.Choice(["auto", "wandb", "local"]),
              help="sweep, sweep-agent: W&B's server or Optuna here; auto: W&B when logged in and reachable.")
@click.option("--project", help="sweep, sweep-agent: W&B project (default [Logging] wandb_project).")
@click.option("--entity", help="sweep, sweep-agent: W&B entity (default [Logging] wandb_entity).")
@click.option("--shard", callback=lambda ctx, param, value: _parse_shard(value), metavar="K/N",
              help="check: decode only part K (1..N) of the images into the cache, so N jobs (e.g. a Slurm "
                   "array) prebuild it together; the summary is skipped.")
@_schema_flags
def cli(ctx: click.Context, mode: str, config_path: str, overrides: tuple[str, ...], log_level: str,
        **options: Any) -> None:
    """Train, tune and evaluate models that score chest X-rays with the 6-zone CSI."""
    if ctx.args and mode != SWEEP_RUN:
        raise click.UsageError(f"No such option: {ctx.args[0]}", ctx)
    setup_logging(log_level)
    sys.argv[1:] = [mask_secrets(arg) for arg in sys.argv[1:]]  # W&B records the command line; parsed already
    flags = {k.replace("__", ".", 1): v for k, v in options.items() if "__" in k and v is not None}
    module_name, function_name = MODES[mode][0].split(":")
    try:
        _check_mode_flags(mode, options)
        options = _member_options(mode, options)
        cfg = load_config(config_path, overrides, cli=flags)
        add_file_log(cfg.logging.log_dir)
        handler = getattr(importlib.import_module(module_name), function_name)
        handler(cfg, {k: v for k, v in options.items() if "__" not in k}
                | {"config_path": config_path, "extra_args": tuple(ctx.args)})
    except CSIError as exc:
        if log_level == "debug":
            logger.exception(str(exc))
        else:
            logger.error(str(exc))
        sys.exit(2)
    except TrainingInterrupted as exc:
        config = "" if config_path == DEFAULT_CONFIG else f" --config {shlex.quote(config_path)}"
        if not exc.is_main:  # another rank of a distributed run: rank 0 says how to resume
            sys.exit(130)
        if mode == "cv":  # the same command continues the unfinished folds, this one from where it stopped
            command = shlex.join(["python", "main.py", *sys.argv[1:]])
            logger.warning(f"{exc}. Continue the cross-validation with: {command}")
        else:
            logger.warning(f"{exc}. Resume with: python main.py --mode train --resume "
                           f"{shlex.quote(str(exc.run_dir))}{config}")
        sys.exit(130)
    except KeyboardInterrupt:
        # Checkpoints and histories are written atomically after each epoch: what was saved is whole.
        logger.warning("interrupted; files written so far are complete (resume a training run with --resume)")
        sys.exit(130)


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    part, _, parts = value.partition("/")
    if not (part.isdigit() and parts.isdigit() and 1 <= int(part) <= int(parts)):
        raise click.BadParameter(f"{value!r} is not K/N with 1 <= K <= N (e.g. 2/8)", param_hint="--shard")
    return int(part), int(parts)


# Flags that only one mode reads: given to another, they would be silently ignored.
_MODE_FLAGS = {"labels": ("--labels", "eval"), "name": ("--name", "eval"), "allow_overlap": ("--allow-overlap", "eval"),
               "preview": ("--preview", "check")}


def _check_mode_flags(mode: str, options: dict[str, Any]) -> None:
    for option, (flag, owner) in _MODE_FLAGS.items():
        if options.get(option) and mode != owner:
            raise CSIError(f"{flag} is an option of --mode {owner}, not of --mode {mode}")
    if (options.get("name") or options.get("allow_overlap")) and not options.get("labels"):
        raise CSIError("--name and --allow-overlap go with --labels FILE (eval of an external set)")


def _member_options(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    """--run and --checkpoint as the tuples `runs`/`checkpoints` (ensembles, compare) and as the single
    values `run`/`checkpoint` (None unless given once) of the modes that take one."""
    runs, checkpoints = options["runs"], options["checkpoints"]
    several = mode in ENSEMBLE_MODES and not (mode == "predict" and options.get("runtime") == "onnx")
    if not several and (len(checkpoints) > 1 or (len(runs) > 1 and mode != "compare")):
        what = "--mode predict --runtime onnx" if mode == "predict" else f"--mode {mode}"
        raise CSIError(f"{what} takes one --checkpoint or --run (got {len(checkpoints)} and {len(runs)}); "
                       "only eval and predict (PyTorch runtime) take several, as an ensemble, and compare two runs")
    return {**options, "run": runs[0] if len(runs) == 1 else None,
            "checkpoint": checkpoints[0] if len(checkpoints) == 1 else None}


def main(default_mode: str | None = None) -> None:
    """Console entry point; legacy module entry points pass the mode they stand for."""
    try:
        cli.main(prog_name="main.py", default_map={"mode": default_mode} if default_mode else None,
                 standalone_mode=False)
    except click.UsageError as exc:  # a bad flag is bad input like any other: one line, exit 2
        click.echo(f"main.py: {exc.format_message()} (python main.py --help lists the options)", err=True)
        sys.exit(2)
    except click.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
