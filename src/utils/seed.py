"""Seeding and determinism for reproducible runs, and the random-generator state a checkpoint carries
for an exact resume."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """[Training] deterministic. On: PyTorch's deterministic algorithms (a warning names any operation
    that has none), cuDNN's deterministic convolutions without autotuning, and exact fp32 on CUDA.
    Off: cuDNN picks the fastest kernels for the run's fixed input size, and CUDA's fp32 matrix
    products and convolutions use TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation)."""
    if deterministic and device.type == "cuda":
        # cuBLAS is reproducible only with a fixed workspace; read when cuBLAS starts, so set before that.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
        # The process-wide setters, which keep PyTorch's old and new TF32 flags consistent (inductor
        # reads the old ones).
        torch.set_float32_matmul_precision("highest" if deterministic else "high")
        torch.backends.cudnn.allow_tf32 = not deterministic


def capture_rng_state(device: torch.device | None = None) -> dict:
    """The state of Python's, NumPy's and torch's generators as plain data (no tensors), so that a
    checkpoint's tensors are its weights and optimizer state alone. Of the GPUs, only `device`'s:
    the one this process draws on."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if device is not None and device.type == "cuda":
        state["cuda"] = [torch.cuda.get_rng_state(device).tolist()]
    return state


def restore_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Put the generators back where capture_rng_state found them. A GPU state goes to `device`
    when it is a GPU; on a machine with fewer GPUs or none it is not needed and left unused."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    # The first (now the only) GPU state is the saving process's own; older checkpoints list one per
    # GPU it could see, cuda:0's first, where rank 0 and single-GPU runs draw.
    saved = state.get("cuda") or []
    if saved and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(torch.tensor(saved[0], dtype=torch.uint8), device)
