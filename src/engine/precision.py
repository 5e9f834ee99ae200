"""precision = auto: time a few training steps of the model in each arithmetic and keep the fastest.

Whether bf16 pays depends on the model as much as on the hardware: on a CPU with AMX it makes
resnet50 more than twice as fast, yet a small CNN's convolutions can run slower in it. So auto
measures instead of guessing. Invariants:

- The candidates are fp32 (never in channels-last, as `channels_last = auto` means "with reduced
  precision") and each reduced precision the device runs natively (bf16 on CPUs with AMX or
  AVX-512-BF16 and on CUDA devices that support it, fp16 on CUDA), in the memory formats
  `channels_last` allows.
- A reduced precision is picked only when it beats fp32 by more than `MARGIN`: a tie within noise
  keeps exact arithmetic. On CUDA, bf16 is preferred to fp16 unless fp16 is faster by more than
  `FP16_MARGIN`: fp16 needs the gradient scaler, and its narrow range overflows.
- The probe never changes the run: it builds its own copy of the model (random weights, nothing
  downloaded) and leaves every random number generator as it found it. It holds one copy and one
  batch (the per-process batch of the run, on a GPU), switching the memory format between
  candidates; a candidate that runs out of GPU memory is skipped with one line saying so (a model
  that fits only in bf16 gets bf16), and if all do, the run stops with one line to lower batch_size.
- The pick belongs to the machine, not to a data set: it is cached (a lone candidate too, unmeasured) in
  $XDG_CACHE_HOME/csi-predictor/precision.json (default ~/.cache) per model, input size, probe
  batch, device, torch version, thread count, oneDNN ISA cap and (on a GPU) TF32, so only the first
  run of a model on a machine pays (about a second for a small model, ~15 s for resnet50 on 2 CPU
  cores). Distributed ranks all use rank 0's pick.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from src.config.schema import Config
from src.data.masks import reads_masks
from src.models.factory import build_architecture
from src.utils.device import autocast, cpu_has_fast_bf16, onednn_isa_cap
from src.utils.errors import ConfigError
from src.utils.io import atomic_write_text
from src.utils.logging import logger

MARGIN = 0.05  # a reduced precision must be this much faster than fp32 to be picked
FP16_MARGIN = 0.10  # fp16 must be this much faster than bf16 to be picked over it
ROUNDS = 3  # timed steps per candidate, the candidates alternating
CPU_PROBE_BATCH = 8  # on a CPU, images/s barely changes beyond this batch, and big models step slowly
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "fp16"
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    def __str__(self) -> str:
        return self.name + (" + channels_last" if self.channels_last else "")


def candidates(device: torch.device, channels_last: str) -> list[Precision]:
    """What auto chooses from on `device` under `[Training] channels_last` (auto, true or false)."""
    reduced = []
    if device.type == "cuda":
        # Native bf16 only (compute capability 8.0 and above): emulated bf16 is never faster.
        reduced = (["bf16"] if torch.cuda.is_bf16_supported(including_emulation=False) else []) + ["fp16"]
    elif device.type == "cpu" and cpu_has_fast_bf16():  # elsewhere bf16 is emulated: never faster
        reduced = ["bf16"]
    layouts = {"auto": (False, True), "true": (True,), "false": (False,)}[channels_last]
    fp32 = [Precision("fp32", channels_last == "true")]
    return fp32 + [Precision(name, layout) for name in reduced for layout in layouts]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or device.type)


def _why_alone(device: torch.device) -> str:
    if device.type != "cpu":
        return ""
    cap = onednn_isa_cap()
    return f" (oneDNN capped at ONEDNN_MAX_CPU_ISA={cap}: no native bf16)" if cap else " (no native bf16)"


def cache_file() -> Path:
    """Where measured picks are kept: $XDG_CACHE_HOME/csi-predictor/precision.json."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "csi-predictor" / "precision.json"


def probe_batch(cfg: Config, device: torch.device) -> int:
    """The batch a step is timed at: on a GPU, what each process of the run gets ([Training] batch_size
    is split over a distributed run's processes)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    per_process = max(cfg.training.batch_size // (torch.distributed.get_world_size() if distributed else 1), 1)
    return per_process if device.type == "cuda" else min(per_process, CPU_PROBE_BATCH)


def _cache_key(cfg: Config, device: torch.device) -> str:
    m = cfg.model
    # With lung masks the model pools by mask, or runs six backbone passes: each times differently.
    pooling = f"mask/{m.zone_focus}" if reads_masks(cfg.data) else m.zone_pooling
    return (f"{m.model_arch} pooling={pooling} {cfg.data.image_size}px batch={probe_batch(cfg, device)} "
            f"channels_last={cfg.training.channels_last} | {_device_name(device)} | torch {torch.__version__} "
            f"threads={torch.get_num_threads()}" + (f" isa<={onednn_isa_cap()}" if onednn_isa_cap() else "")
            # [Training] deterministic turns TF32 off, which slows fp32 on a GPU
            + (f" tf32={torch.backends.cuda.matmul.allow_tf32}" if device.type == "cuda" else ""))


def time_steps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, device: torch.device,
               options: list[Precision]) -> dict[Precision, float]:
    """Median seconds of one training step (forward, backward, SGD update) of `model` per option, the
    options alternating; an option that runs out of GPU memory is left out (and said so)."""
    samples: dict[Precision, list[float]] = {option: [] for option in options}
    for round_ in range(ROUNDS + 1):  # round 0 warms up: kernel choice, allocations
        for option in options[round_ % len(options):] + options[:round_ % len(options)]:
            if option not in samples:
                continue
            try:
                seconds = _step(model, images, targets, option, device)
            except torch.OutOfMemoryError:
                seconds = None
            if seconds is None:  # outside the except block, whose traceback holds the step's tensors
                del samples[option]
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                logger.info(f"precision = auto: {option} runs out of memory at {len(images)} images per step on "
                            f"{_device_name(device)}: skipped")
            elif round_:
                samples[option].append(seconds)
    return {option: statistics.median(values) for option, values in samples.items()}


def _step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, option: Precision,
          device: torch.device) -> float:
    layout = torch.channels_last if option.channels_last else torch.contiguous_format
    model.to(memory_format=layout).train()  # in place: one copy of the weights serves every option
    images = images.contiguous(memory_format=layout)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with autocast(device, option.dtype):
        logits = model(images)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.sub_(parameter.grad, alpha=1e-6)
                parameter.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def pick(step_seconds: dict[Precision, float]) -> Precision:
    """The fastest option, except that fp16 gives way to bf16 unless faster by more than FP16_MARGIN,
    and a reduced precision to fp32 unless faster by more than MARGIN. Options missing from
    `step_seconds` (out of memory) are no choice."""
    fastest = min(step_seconds, key=step_seconds.get)
    bf16 = [option for option in step_seconds if option.name == "bf16"]
    if fastest.name == "fp16" and bf16:
        best_bf16 = min(bf16, key=step_seconds.get)
        if step_seconds[fastest] >= (1 - FP16_MARGIN) * step_seconds[best_bf16]:
            fastest = best_bf16
    fp32 = next((option for option in step_seconds if option.name == "fp32"), None)
    if fp32 is not None and not step_seconds[fastest] < (1 - MARGIN) * step_seconds[fp32]:
        return fp32
    return fastest


def choose_precision(cfg: Config, device: torch.device, measure: bool = True) -> Precision:
    """`precision = auto` for this model, input size and device: the cached pick, else a measured one
    (with `measure=False`, as evaluation and prediction ask: fp32, with nothing timed or recorded)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    choice = None
    if not distributed or torch.distributed.get_rank() == 0:
        choice = _measured_or_cached(cfg, device, measure)
    if distributed:
        box = [choice]
        torch.distributed.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def _measured_or_cached(cfg: Config, device: torch.device, measure: bool) -> Precision:
    options = candidates(device, cfg.training.channels_last)
    path, key = cache_file(), _cache_key(cfg, device)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return Precision(known[key]["precision"], known[key]["channels_last"])
    if not measure:
        return options[0]
    if len(options) == 1:  # nothing to measure; the pick is still recorded, once per machine like the others
        choice, rate = options[0], {}
        logger.info(f"precision = auto: {choice}, the only candidate on {_device_name(device)}{_why_alone(device)}")
    else:
        step_seconds = time_model_steps(cfg, device, options)
        if not step_seconds:
            raise ConfigError(f"[Training] batch_size = {cfg.training.batch_size}: {cfg.model.model_arch} at "
                              f"{cfg.data.image_size} px runs out of memory on {_device_name(device)} in every "
                              f"precision auto tried ({', '.join(map(str, options))}); lower batch_size")
        choice = pick(step_seconds)
        rate = {str(o): round(probe_batch(cfg, device) / s, 2) for o, s in step_seconds.items()}
        logger.info(f"precision = auto: {cfg.model.model_arch} at {cfg.data.image_size} px measured "
                    + ", ".join(f"{name} {r} img/s" for name, r in rate.items()) + f" -> {choice}")
    known[key] = {"precision": choice.name, "channels_last": choice.channels_last, "images_per_second": rate}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(known, indent=1))
    return choice


def time_model_steps(cfg: Config, device: torch.device, options: list[Precision]) -> dict[Precision, float]:
    """time_steps on a copy of the model with random weights and a random batch, leaving the random
    generators as they were and, on a GPU, its memory to the run."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # Weights do not change the speed: random ones, so nothing is read or downloaded.
        model = build_architecture(cfg).to(device)
        batch, size = probe_batch(cfg, device), cfg.data.image_size
        images = torch.randn(batch, model.input_channels, size, size, device=device)
        targets = torch.randint(0, cfg.model.num_classes, (batch, 6), device=device)
        step_seconds = time_steps(model, images, targets, device, options)
    del model, images, targets
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return step_seconds
