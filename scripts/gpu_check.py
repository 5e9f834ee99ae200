"""`make gpu-check`: every path one GPU runs, once, in at most ~5 minutes; writes docs/gpu.md and docs/gpu.json.

Stages (each independent: one that fails records its error in one line and the check goes on):

    data       the check's own small data set (scripts/make_demo_data.py, or --demo DIR made by it elsewhere)
    fp32       train_model in fp32 (TF32 on a GPU unless [Training] deterministic), with lung masks
    bf16       train_model in bf16 autocast, channels_last
    fp16       train_model in fp16 with the GradScaler, gradient clipping and accumulation (CUDA only)
    auto       precision = auto's probe (choose_precision), measured afresh: what it picked and its rates
    interrupt  a real `main.py --mode train` process sent SIGINT after its first epoch, then the resume it prints
    eval       evaluate_run on the resumed run's checkpoint (Grad-CAM figures included)
    predict    predict_images with that checkpoint
    export     export_model to ONNX, then predict_with_onnx (onnxruntime) against PyTorch's predictions
    hyperopt   run_study: two Optuna trials of one epoch
    loader     the real loader alone (make_loader + BatchPreparer on the device): images/s
    pipeline   training images/s through the real loader / the same step on stored batches already on the
               device (target >= 0.9)
    sync       synchronisations per training step counted with torch.cuda.set_sync_debug_mode (target <= 1)
    speed_*    training images/s and peak GPU memory per backbone at its native size, batch 128, in
               fp32 (TF32), bf16 and fp16 (channels_last for CNNs)
    compile    the same for resnet50 bf16 through torch.compile (wrap_model, as the trainer compiles)

Everything runs through the project's own functions (train_model, train_epoch, make_loader, ...); nothing
is downloaded (random weights, HF_HUB_OFFLINE=1). Without a CUDA device the check says so in one line,
writes nothing and exits 0. `--device cpu --quick` runs the same stages with a tiny model and images on
the CPU (the stages that need CUDA say "skipped: needs CUDA"): what the tests run, so that one GPU run suffices.

    python scripts/gpu_check.py                          # on a GPU machine (make gpu-check)
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu-check
    python scripts/gpu_check.py --only data,pipeline,sync
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib import ROOT, machine, write_atomically

sys.path.insert(0, str(ROOT))  # this checkout's src/, whichever checkout the venv was installed from

PIPELINE_TARGET = 0.9  # loader img/s over on-device img/s, resnet50 224 px bf16
SYNC_TARGET = 1.0  # synchronisations per training step
RESNET50_TARGET = 3000  # img/s through our own loader, resnet50 224 px bf16 on an H100 (the aim)


@dataclass(frozen=True)
class Sizes:
    """How big each stage runs: a GPU's sizes, or --quick's tiny ones (which prove the paths, not speed)."""

    arch: str  # the model of the training paths
    image_size: int
    batch: int
    demo_images: int  # of the check's own data set
    demo_side: int
    speed: tuple[str, ...]  # backbones timed at their native size
    speed_size: int | None  # None: each backbone's native size
    speed_batch: int
    speed_steps: int
    pipeline_arch: str
    pipeline_size: int
    pipeline_steps: int  # timed training steps per round
    rounds: int  # of the pipeline's alternating timings
    interrupt_batch: int  # small: epochs of many steps, so that the signal lands inside the run
    timeout_s: int  # for each main.py process


GPU = Sizes(arch="resnet50", image_size=224, batch=16, demo_images=64, demo_side=256,
            speed=("resnet50", "chexnet", "raddino"), speed_size=None, speed_batch=128, speed_steps=10,
            pipeline_arch="resnet50", pipeline_size=224, pipeline_steps=30, rounds=2, interrupt_batch=2, timeout_s=240)
QUICK = Sizes(arch="custom_cnn", image_size=32, batch=4, demo_images=24, demo_side=64,
              speed=("custom_cnn",), speed_size=32, speed_batch=4, speed_steps=2,
              pipeline_arch="custom_cnn", pipeline_size=32, pipeline_steps=2, rounds=1, interrupt_batch=4,
              timeout_s=240)


class Skipped(Exception):
    """A stage that cannot run here (e.g. needs CUDA); its message says why."""


@dataclass
class Check:
    """What the stages share: the device, sizes, a scratch directory, the data and the run they make."""

    device: object  # torch.device
    sizes: Sizes
    scratch: Path
    demo: Path | None = None  # labels.csv, images/, masks/
    checkpoint: Path | None = None  # the latest run's best checkpoint: what eval, predict and export read
    config_path: Path | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def require_cuda(self) -> None:
        if not self.cuda:
            raise Skipped("needs CUDA")

    def require_data(self) -> Path:
        if self.config_path is None:
            raise Skipped("no data set (stage data failed)")
        return self.config_path

    def config(self, **values):
        """The check's config.ini with `values` ({"Section.key": value}) applied."""
        from src.config.loader import apply_overrides, load_config

        return apply_overrides(load_config(self.require_data(), env={}), values)


STAGES: dict[str, tuple[str, Callable[[Check], dict]]] = {}


def stage(key: str, title: str):
    """Register `function(check) -> figures` as stage `key` (see --only); they run in this order."""
    def register(function: Callable[[Check], dict]) -> Callable[[Check], dict]:
        STAGES[key] = (title, function)
        return function
    return register


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def synchronize(check: Check) -> None:
    import torch

    if check.cuda:
        torch.cuda.synchronize(check.device)


def reset_peak_memory(check: Check) -> None:
    import torch

    if check.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(check.device)


def peak_memory(check: Check) -> dict:
    """{"peak_gpu_memory_mib": ...} since the last reset_peak_memory; nothing on a CPU."""
    import torch

    return {"peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(check.device) / 2**20)} if check.cuda else {}


@stage("data", "The check's own data set and config")
def make_data(check: Check) -> dict:
    sizes = check.sizes
    if check.demo is None:
        check.demo = check.scratch / "demo"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--out", str(check.demo),
                        "--n-images", str(sizes.demo_images), "--size", str(sizes.demo_side)],
                       check=True, capture_output=True, text=True, cwd=ROOT)
    demo = check.demo
    if not (demo / "labels.csv").is_file():
        raise FileNotFoundError(f"{demo}: no labels.csv (make it with scripts/make_demo_data.py)")
    masks = demo / "masks"
    path = check.scratch / "config" / "config.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Lung masks: zone maps travel from the cache as small integer maps and become masks on the device.
    path.write_text(
        f"[Data]\nlabels_csv = {demo / 'labels.csv'}\nimage_dir = {demo / 'images'}\n"
        f"mask_dir = {masks if masks.is_dir() else ''}\ncache_dir = {check.scratch / 'cache'}\n"
        f"image_size = {sizes.image_size}\n"
        f"[Model]\nmodel_arch = {sizes.arch}\npretrained = false\n"
        f"[Training]\ndevice = {check.device.type}\nbatch_size = {sizes.batch}\nn_epochs = 1\nseed = 0\n"
        f"output_dir = {check.scratch / 'models'}\n"
        f"[Evaluation]\nbatch_size = {sizes.batch}\nbootstrap_samples = 100\nsaliency_largest_error = 1\n"
        f"saliency_random = 0\n"
        f"[Logging]\nlog_dir = {check.scratch / 'logs'}\n"
        f"[Hyperopt]\nn_trials = 2\nmax_epochs = 1\npruner = none\nstudy_name = gpu_check\n"
        f"output_dir = {check.scratch / 'hyperopt'}\n"
        "Training.learning_rate = loguniform(1e-4, 1e-2)\nOptimization.optimizer = choice(adam, sgd)\n")
    check.config_path = path
    images = len(list((demo / "images").iterdir()))
    return {"images": images, "lung_masks": masks.is_dir(), "source": str(demo)}


def train(check: Check, name: str, **values) -> dict:
    """train_model for one epoch with `values`; its figures, and its checkpoint kept for eval and export."""
    import torch

    from src.training.trainer import train_model

    cfg = check.config(**{"Training.run_name": name, **values})
    reset_peak_memory(check)
    result = train_model(cfg)
    history = json.loads((result.run_dir / "logs" / "training_history.json").read_text())
    last = history[-1]
    if not all(map(lambda h: h["train_loss"] == h["train_loss"], history)):
        raise RuntimeError(f"non-finite training loss: {[h['train_loss'] for h in history]}")
    check.checkpoint = result.run_dir / "best_model.pth"
    figures = {"epochs": len(history), "train_loss": round(last["train_loss"], 4),
               "val_loss": round(result.best_metrics["val_loss"], 4),
               "skipped_steps": sum(h["skipped_steps"] for h in history),
               "images_per_second": round(last["images_per_second"], 1), **peak_memory(check)}
    if check.cuda:
        figures["tf32"] = (torch.get_float32_matmul_precision() != "highest" and torch.backends.cudnn.allow_tf32)
    return figures


@stage("fp32", "Training in fp32 (TF32 on a GPU)")
def train_fp32(check: Check) -> dict:
    return train(check, "fp32", **{"Training.precision": "fp32"})


@stage("bf16", "Training in bf16, channels_last")
def train_bf16(check: Check) -> dict:
    return train(check, "bf16", **{"Training.precision": "bf16", "Training.channels_last": "true"})


@stage("fp16", "Training in fp16 + GradScaler, clipping, accumulation")
def train_fp16(check: Check) -> dict:
    check.require_cuda()
    return train(check, "fp16", **{"Training.precision": "fp16", "Training.channels_last": "true",
                                   "Training.max_grad_norm": 1.0, "Training.gradient_accumulation_steps": 2})


@stage("auto", "precision = auto: the probe's pick")
def auto_precision(check: Check) -> dict:
    from src.engine.precision import cache_file, choose_precision

    sizes = check.sizes
    cfg = check.config(**{"Training.precision": "auto", "Model.model_arch": sizes.pipeline_arch,
                          "Data.image_size": sizes.pipeline_size, "Data.mask_dir": "",
                          "Training.batch_size": sizes.speed_batch})
    reset_peak_memory(check)
    choice = choose_precision(cfg, check.device)  # measured: XDG_CACHE_HOME is the check's own
    rates = next(iter(json.loads(cache_file().read_text()).values()))["images_per_second"]
    return {"model": f"{sizes.pipeline_arch} {sizes.pipeline_size} px", "picked": str(choice),
            "probe_images_per_second": rates or "none (the only candidate here)", **peak_memory(check)}


class Process:
    """A main.py process whose output (stdout and stderr) is read as it comes by a thread."""

    def __init__(self, args: list[str], env: dict) -> None:
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()
        with self.seen:
            self.seen.notify_all()

    @property
    def output(self) -> str:
        with self.seen:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """Whether a line matching `pattern` came before the process ended or `timeout` passed."""
        with self.seen:
            return self.seen.wait_for(lambda: any(re.search(pattern, line) for line in self.lines)
                                      or not self.reader.is_alive(), timeout) and \
                any(re.search(pattern, line) for line in self.lines)

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise TimeoutError(f"main.py ran past {timeout:.0f} s: {self.output[-300:]}") from None
        self.reader.join(timeout)
        return code


def last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


@stage("interrupt", "Ctrl-C (SIGINT) to a main.py training process, then its resume")
def interrupt_and_resume(check: Check) -> dict:
    from src.utils.checkpoint import read_checkpoint

    config = check.require_data()
    timeout = check.sizes.timeout_s
    precision = "bf16" if check.cuda else "fp32"
    process = Process(["--mode", "train", "--config", str(config), "--set", "Training.n_epochs=3",
                       "--set", f"Training.batch_size={check.sizes.interrupt_batch}",
                       "--set", "Training.run_name=interrupt", "--set", f"Training.precision={precision}"],
                      dict(os.environ))
    if not process.wait_for(r"epoch 1/3 ", timeout):
        process.finish(timeout)
        raise RuntimeError(f"no first epoch: {last_lines(process.output)}")
    process.process.send_signal(signal.SIGINT)
    signalled = time.perf_counter()
    code = process.finish(timeout)
    stopped_s = time.perf_counter() - signalled
    if code != 130:
        raise RuntimeError(f"exit {code} after SIGINT, expected 130: {last_lines(process.output)}")
    commands = re.findall(r"Resume with: (.+)", process.output)
    if not commands:
        raise RuntimeError(f"no resume command printed: {last_lines(process.output)}")
    words = shlex.split(commands[-1])
    run_dir = Path(words[words.index("--resume") + 1])
    state = read_checkpoint(run_dir / "last_model.pth")
    stopped_at = (state["epoch"], state["next_batch"])
    resumed = Process(words[2:], dict(os.environ))  # the printed command, less its "python main.py"
    code = resumed.finish(timeout)
    if code != 0:
        raise RuntimeError(f"the resume exited {code}: {last_lines(resumed.output)}")
    epochs = [h["epoch"] for h in json.loads((run_dir / "logs" / "validation_history.json").read_text())]
    if epochs != [1, 2, 3]:
        raise RuntimeError(f"the resumed run's epochs are {epochs}, expected [1, 2, 3]")
    check.checkpoint = run_dir / "best_model.pth"
    return {"precision": precision, "stopped_after": f"epoch {stopped_at[0]}, {stopped_at[1]} batches of the next",
            "exit_code": 130, "seconds_to_stop": round(stopped_s, 1), "resumed_epochs": epochs}


def require_checkpoint(check: Check) -> Path:
    if check.checkpoint is None:
        raise Skipped("no checkpoint (every training stage failed)")
    return check.checkpoint


@stage("eval", "eval of the checkpoint")
def evaluate(check: Check) -> dict:
    from src.evaluation.evaluate import evaluate_run

    checkpoint = require_checkpoint(check)
    run = evaluate_run(check.config(), checkpoint=str(checkpoint))
    return {"run": checkpoint.parent.name,
            **{f"{split}_{name}": round(metrics[name], 4) for split, metrics in run.metrics.items()
               for name in ("f1_macro", "qwk")},
            "report": (run.out_dir / "report.html").is_file(), "saliency_figures": len(run.figures["saliency"])}


@stage("predict", "predict with the checkpoint")
def predict(check: Check) -> dict:
    from src.evaluation.predict import predict_images

    table = predict_images(check.config(), require_checkpoint(check), check.demo / "images",
                           check.scratch / "predictions.csv")
    return {"images": len(table), "mean_csi_pred": round(float(table["csi_pred"].mean()), 4)}


@stage("export", "export to ONNX, checked with onnxruntime")
def export(check: Check) -> dict:
    import importlib.util

    import pandas as pd

    from src.deploy.export import export_model

    checkpoint = require_checkpoint(check)
    cfg = check.config()
    output = export_model(cfg, checkpoint, "onnx", check.scratch / "model.onnx")  # compares with PyTorch itself
    figures = {"mib": round(output.stat().st_size / 2**20, 1)}
    if importlib.util.find_spec("onnxruntime") is None:
        return {**figures, "onnxruntime": "not installed: predictions not compared"}
    from src.deploy.onnx_predict import predict_with_onnx

    onnx = predict_with_onnx(cfg, output, check.demo / "images", check.scratch / "predictions_onnx.csv")
    torch_table = check.scratch / "predictions.csv"
    if torch_table.is_file():  # written by stage predict with the same checkpoint
        torch_probs = pd.read_csv(torch_table, dtype={"FileID": str}).set_index("FileID").filter(regex=r"_p\d$")
        onnx_probs = onnx.set_index("FileID")[torch_probs.columns].loc[torch_probs.index]
        difference = float((onnx_probs - torch_probs).abs().to_numpy().max())
        figures["max_probability_difference_vs_pytorch"] = float(f"{difference:.2g}")
    return {**figures, "onnx_images": len(onnx)}


@stage("hyperopt", "Two Optuna trials (run_study)")
def hyperopt(check: Check) -> dict:
    from src.optimization.runner import run_study

    outcome = run_study(check.config())
    states = Counter(t.state.name for t in outcome.study.trials)
    if states.get("COMPLETE", 0) != 2:
        raise RuntimeError(f"trials: {dict(states)}, expected 2 complete")
    return {"trials": dict(states), "best_value": round(outcome.study.best_value, 4)}


def pipeline_parts(check: Check, batch: int, batches: int, precision: str, **values):
    """The pipeline model's resolved config, its loader over `batches` batches of real cached images (rows
    repeated), the training batch preparer, and (model, optimizer, criterion, settings, scaler)."""
    import numpy as np
    import torch

    from src.data.augment import BatchAugmenter
    from src.data.dataset import CSIDataset, loader_options, make_loader
    from src.data.load import load_data
    from src.data.prepare import BatchPreparer
    from src.data.preprocess import Normalization
    from src.engine.settings import LoopSettings, place_model
    from src.models.factory import build_model
    from src.models.zoo import resolve_preprocessing
    from src.training.loss import build_criterion
    from src.training.optimizer import create_optimizer

    sizes = check.sizes
    cfg = resolve_preprocessing(check.config(**{
        "Model.model_arch": sizes.pipeline_arch, "Data.image_size": sizes.pipeline_size, "Data.mask_dir": "",
        "Training.batch_size": batch, "Training.precision": precision, **values}))
    data = load_data(cfg)
    train = data.dataset("train")
    count = batch * batches
    dataset = CSIDataset(train.images, np.resize(train.cache_rows, count), np.resize(train.labels.numpy(),
                         (count, train.labels.shape[1])), [str(i) for i in range(count)])
    loader = make_loader(dataset, batch, shuffle=True, seed=0, **loader_options(cfg.training, check.device))
    prepare = BatchPreparer(Normalization.of(cfg.data), BatchAugmenter(cfg.augmentation, cfg.training.seed))
    settings = dataclasses.replace(LoopSettings.from_config(cfg, check.device), progress=False)
    torch.manual_seed(0)
    model = place_model(build_model(cfg), check.device, settings)
    scaler = torch.amp.GradScaler("cuda") if settings.dtype == torch.float16 else None
    step = (model, create_optimizer(model, cfg), build_criterion(cfg, data.labels("train")).to(check.device),
            settings, scaler)
    return cfg, loader, prepare, step


def epoch_rate(check: Check, batches, prepare, step, epoch: int) -> float:
    """Training images/s of one train_epoch over `batches` (a loader, or a list of stored batches)."""
    from src.training.loop import train_epoch

    model, optimizer, criterion, settings, scaler = step
    if hasattr(batches, "batch_sampler"):
        batches.batch_sampler.set_epoch(epoch)
    prepare.set_epoch(epoch)
    synchronize(check)
    started = time.perf_counter()
    metrics = train_epoch(model, batches, criterion, optimizer, check.device, epoch, settings, scaler=scaler,
                          prepare=prepare)
    synchronize(check)
    elapsed = time.perf_counter() - started
    return metrics["images_per_second"] * metrics["epoch_seconds"] / elapsed  # the images it saw / the wall time


@stage("loader", "The loader alone: cache -> device, prepared")
def loader_alone(check: Check) -> dict:
    sizes = check.sizes
    batch = sizes.speed_batch
    _, loader, prepare, _ = pipeline_parts(check, batch, sizes.pipeline_steps, "fp32")
    for stored, targets, _ in loader:  # warm-up: workers start, pinned buffers
        prepare(stored, targets, check.device)
        break
    synchronize(check)
    started, images = time.perf_counter(), 0
    for stored, targets, _ in loader:
        prepare(stored, targets, check.device)
        images += len(targets)
    synchronize(check)
    return {"images_per_second": round(images / (time.perf_counter() - started), 1), "batch": batch,
            "num_workers": loader.num_workers, "pin_memory": loader.pin_memory}


@stage("pipeline", "Pipeline efficiency: through the real loader / on the device already")
def pipeline(check: Check) -> dict:
    from src.data.dataset import StoredBatch

    sizes = check.sizes
    batch, steps = sizes.speed_batch, sizes.pipeline_steps
    precision = "bf16" if check.cuda else "fp32"
    reset_peak_memory(check)
    cfg, loader, prepare, step = pipeline_parts(check, batch, steps, precision, **{"Training.channels_last": "true"})
    on_device = [(StoredBatch(stored.images.to(check.device), None), targets.to(check.device), ids)
                 for stored, targets, ids in loader]
    epoch_rate(check, loader, prepare, step, 1)  # warm-up: workers, kernel choice, allocations
    epoch_rate(check, on_device, prepare, step, 1)
    rates: dict[str, list[float]] = {"loader": [], "device": []}
    for round_ in range(sizes.rounds):  # alternating, so that a disturbance falls on both
        rates["loader"].append(epoch_rate(check, loader, prepare, step, 2 + round_))
        rates["device"].append(epoch_rate(check, on_device, prepare, step, 2 + round_))
    loader_rate, device_rate = statistics.median(rates["loader"]), statistics.median(rates["device"])
    efficiency = loader_rate / device_rate
    figures = {"model": f"{sizes.pipeline_arch} {sizes.pipeline_size} px {precision} channels_last, batch {batch}",
               "loader_images_per_second": round(loader_rate, 1), "device_images_per_second": round(device_rate, 1),
               "efficiency": round(efficiency, 3), "num_workers": loader.num_workers,
               "targets": [target("pipeline efficiency", efficiency, ">=", PIPELINE_TARGET)],
               **peak_memory(check)}
    if check.cuda and sizes is GPU:
        figures["targets"].append(target("resnet50 224 px bf16 img/s through the loader", loader_rate, ">=",
                                         RESNET50_TARGET))
    return figures


def target(what: str, value: float, op: str, bound: float) -> dict:
    met = value >= bound if op == ">=" else value <= bound
    return {"what": what, "value": round(value, 3), "target": f"{op} {bound:g}", "met": met}


@stage("sync", "Synchronisations per training step (torch.cuda.set_sync_debug_mode)")
def synchronisations(check: Check) -> dict:
    import torch

    check.require_cuda()
    figures: dict = {"targets": []}
    for precision, values in (("bf16", {"Training.max_grad_norm": 1.0}),
                              ("fp16", {"Training.max_grad_norm": 1.0, "Training.gradient_accumulation_steps": 2})):
        counts, places = {}, Counter()
        for batches in (4, 12):
            _, loader, prepare, step = pipeline_parts(check, 32, batches, precision, **values)
            epoch_rate(check, loader, prepare, step, 1)  # warm-up outside the count
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    epoch_rate(check, loader, prepare, step, 2)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            counts[batches] = len(syncs)
            places.update(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
        per_step = (counts[12] - counts[4]) / 8
        what = f"{precision}" + (" + GradScaler, accumulation 2" if precision == "fp16" else "") + ", clipping"
        figures[f"{precision}_per_step"] = per_step
        figures[f"{precision}_per_epoch_of_12"] = counts[12]
        figures[f"{precision}_where"] = dict(places.most_common(6))
        figures["targets"].append(target(f"synchronisations per step, {what}", per_step, "<=", SYNC_TARGET))
    return figures


def speed_cell(check: Check, arch: str, size: int, precision: str, compiled: bool = False) -> dict:
    """Training images/s and peak GPU memory of `arch` on batches already on the device (random weights),
    at the speed batch, halved while it runs out of GPU memory."""
    import torch

    from src.engine.settings import LoopSettings, place_model
    from src.models.factory import build_model
    from src.training.loop import train_epoch
    from src.training.loss import WeightedCSILoss
    from src.training.optimizer import create_optimizer
    from src.training.parallel import wrap_model
    from src.utils.distributed import DistInfo

    sizes, batch = check.sizes, check.sizes.speed_batch
    cnn = arch not in ("raddino", "vit_b_16") and not arch.startswith("hf:")
    settings = LoopSettings(dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision],
                            channels_last=cnn and precision != "fp32", progress=False)
    cfg = check.config(**{"Model.model_arch": arch, "Data.image_size": size, "Data.mask_dir": ""})
    while True:
        reset_peak_memory(check)
        try:
            torch.manual_seed(0)
            model = place_model(build_model(cfg), check.device, settings)
            net = wrap_model(model, compiled, DistInfo(), check.device)
            optimizer, criterion = create_optimizer(model, cfg), WeightedCSILoss()
            scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
            images = torch.randn(batch, model.input_channels, size, size, device=check.device)
            data = [(images, torch.randint(0, 5, (batch, 6), device=check.device), [""] * batch)]
            train_epoch(net, data * 3, criterion, optimizer, check.device, 0, settings, scaler=scaler)  # warm-up
            synchronize(check)
            started = time.perf_counter()
            train_epoch(net, data * sizes.speed_steps, criterion, optimizer, check.device, 1, settings, scaler=scaler)
            synchronize(check)
            rate = batch * sizes.speed_steps / (time.perf_counter() - started)
            return {"images_per_second": round(rate, 1), "batch": batch, **peak_memory(check)}
        except torch.OutOfMemoryError:
            pass
        finally:
            model = net = optimizer = images = data = None
        if batch <= 8:
            raise RuntimeError(f"{arch} {precision}: out of GPU memory down to batch {batch}")
        batch //= 2


def speed(check: Check, arch: str) -> dict:
    from src.models.zoo.catalog import describe

    size = check.sizes.speed_size or describe(arch).native_size
    figures, errors = {"size": size}, []
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and not check.cuda:
            figures[precision] = "skipped: needs CUDA"
            continue
        try:
            figures[precision] = speed_cell(check, arch, size, precision)
        except Exception as exc:  # noqa: BLE001 - one cell's failure is recorded; the others still run
            errors.append(f"{precision}: {one_line(exc)}")
    if errors:
        raise StageFailed("; ".join(errors), figures)
    return figures


class StageFailed(Exception):
    """A stage that failed after measuring some figures, which are kept."""

    def __init__(self, message: str, figures: dict) -> None:
        super().__init__(message)
        self.figures = figures


def speed_stage(arch: str):
    def measure(check: Check) -> dict:
        return speed(check, arch)
    return measure


def register_speed_stages() -> None:
    for arch in dict.fromkeys(GPU.speed + QUICK.speed):
        stage(f"speed_{arch}", f"Training images/s of {arch} at its native size")(speed_stage(arch))


register_speed_stages()


@stage("compile", "torch.compile: resnet50 bf16 (wrap_model, as the trainer compiles)")
def compiled(check: Check) -> dict:
    from src.models.zoo.catalog import describe

    arch = check.sizes.speed[0]
    size = check.sizes.speed_size or describe(arch).native_size
    started = time.perf_counter()
    figures = speed_cell(check, arch, size, "bf16", compiled=True)
    return {"model": f"{arch} {size} px bf16 channels_last", **figures,
            "seconds_with_compilation": round(time.perf_counter() - started, 1)}


def selected_stages(check: Check, only: list[str]) -> list[str]:
    """The stages to run: --only's, else all; the speed stages of the other sizes' backbones are not this run's."""
    keys = only or list(STAGES)
    return [k for k in keys if not k.startswith("speed_") or k.removeprefix("speed_") in check.sizes.speed]


def run_stage(check: Check, key: str) -> dict:
    title, function = STAGES[key]
    print(f"== {key}: {title}", flush=True)
    started = time.perf_counter()
    record = {"stage": key, "title": title}
    try:
        record |= {"status": "pass", "figures": function(check)}
    except Skipped as reason:
        record |= {"status": "skipped", "error": f"skipped: {reason}"}
    except StageFailed as failed:
        record |= {"status": "fail", "error": str(failed), "figures": failed.figures}
    except Exception as exc:  # noqa: BLE001 - every stage is independent: record its error, go on
        record |= {"status": "fail", "error": one_line(exc)}
    record["seconds"] = round(time.perf_counter() - started, 1)
    print(f"   {record['status']} ({record['seconds']} s) {record.get('error', '')}", flush=True)
    return record


def about(check: Check) -> dict:
    """The machine the figures belong to: benchmark.py's description, the GPU's driver and CUDA."""
    import torch

    info = machine()
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        info |= {"gpu": torch.cuda.get_device_name(check.device),
                 "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "compute_capability": f"{props.major}.{props.minor}", "driver": gpu_driver(),
                 "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    info["device"] = info["gpu"] if check.cuda else f"CPU: {info['cpu']}"
    return info


def gpu_driver() -> str:
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(records: list[dict], info: dict, quick: bool, total_s: float) -> str:
    lines = ["# GPU check", "",
             "Written by `make gpu-check` (`scripts/gpu_check.py`), which runs every training, evaluation and export",
             "path that one GPU runs and measures it; each figure below was measured in this run.", "",
             "## Machine", "", f"- Device: {info['device']}"]
    if "driver" in info:
        lines += [f"- GPU memory {info['gpu_memory_gib']} GiB, compute capability {info['compute_capability']}, "
                  f"driver {info['driver']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}"]
    lines += [f"- CPU: {info['cpu']}, {info['cores']} cores; memory {info['memory_gib']} GiB",
              f"- torch {info['torch']}, Python {info['python']}, {info['os']}", ""]
    if quick:
        lines += ["**--quick run: tiny model and images that prove the paths run; its figures mean nothing.**", ""]
    lines += [f"## Stages ({total_s:.0f} s in all)", "", "| stage | status | seconds | figures or error |",
              "| --- | --- | --- | --- |"]
    for record in records:
        shown = {k: v for k, v in record.get("figures", {}).items() if k != "targets"}
        detail = "; ".join(filter(None, [record.get("error", ""), cell(shown) if shown else ""]))
        status = record["status"] if record["status"] != "fail" else "**fail**"
        lines.append(f"| {record['stage']}: {record['title']} | {status} | {record['seconds']} | {detail} |")
    targets = [t for r in records for t in r.get("figures", {}).get("targets", [])]
    if targets:
        lines += ["", "## Targets", "", "| what | measured | target | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {t['what']} | {cell(t['value'])} | {t['target']} | {'yes' if t['met'] else '**no**'} |"
                  for t in targets]
    return "\n".join(lines) + "\n"


def summary_table(records: list[dict]) -> str:
    width = max(len(r["stage"]) for r in records)
    rows = [f"{'stage':<{width}}  status   seconds  figures or error"]
    for r in records:
        shown = {k: v for k, v in r.get("figures", {}).items() if k not in ("targets",) and not k.endswith("_where")}
        detail = r.get("error") or cell(shown)
        rows.append(f"{r['stage']:<{width}}  {r['status']:<7}  {r['seconds']:>7}  {detail[:150]}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default; without one the check says so and exits 0) or cpu (to test the check)")
    parser.add_argument("--quick", action="store_true", help="tiny model and images: proves the paths run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where gpu.md and gpu.json go")
    parser.add_argument("--demo", type=Path, help="a data set made by scripts/make_demo_data.py (default: make one)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(STAGES)}")
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out (recorded as skipped)")
    args = parser.parse_args(argv)
    chosen, skipped = [k for k in args.only.split(",") if k], {k for k in args.skip.split(",") if k}
    unknown = sorted((set(chosen) | skipped) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if args.demo is not None and not (args.demo / "labels.csv").is_file():
        parser.error(f"--demo {args.demo}: no labels.csv (make it with scripts/make_demo_data.py)")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__} sees none); nothing run, nothing written")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="csi-gpu-check-") as scratch:
        # Nothing downloads; precision = auto measures afresh instead of reusing this machine's cached pick.
        os.environ.update(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(Path(scratch) / "xdg-cache"))
        from src.utils.logging import setup_logging
        from src.utils.seed import set_determinism

        setup_logging("warning")
        device = torch.device(args.device)
        set_determinism(False, device)  # as training sets it: TF32 and cuDNN autotuning on a GPU
        check = Check(device, QUICK if args.quick else GPU, Path(scratch),
                      args.demo.resolve() if args.demo else None)
        records = []
        for key in selected_stages(check, chosen):
            if key in skipped:
                records.append({"stage": key, "title": STAGES[key][0], "status": "skipped",
                                "error": "skipped: --skip", "seconds": 0.0})
                continue
            records.append(run_stage(check, key))
    total = time.perf_counter() - started
    info = about(check)
    report = {"machine": info, "quick": args.quick, "seconds": round(total, 1), "stages": records}
    write_atomically(args.out / "gpu.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomically(args.out / "gpu.md", markdown(records, info, args.quick, total))
    print(summary_table(records))
    failed = [r["stage"] for r in records if r["status"] == "fail"]
    print(f"gpu-check on {info['device']}: {len(records) - len(failed)} of {len(records)} stages passed or skipped"
          + (f", failed: {', '.join(failed)}" if failed else "") + f"; wrote {args.out / 'gpu.md'} and gpu.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
