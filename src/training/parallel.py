"""The module the loop trains on N processes: BatchNorm synchronised where a rank's batch is small,
parameters that get no gradient set aside, then DistributedDataParallel around the (compiled) model.
"""

from __future__ import annotations

import torch
from torch import nn

from src.utils.distributed import DistInfo
from src.utils.errors import ConfigError
from src.utils.logging import logger

# BatchNorm normalises by the statistics of a rank's own images. Wu & He (Group Normalization, ECCV
# 2018, fig. 1) measured ResNet-50's ImageNet error against the per-GPU batch: flat from 32 down to
# 16 images, then worse at 8 and far worse at 4 or 2. Below 16 images per rank `sync_batchnorm =
# auto` takes the statistics over all ranks' images, at the price of one all-reduce per BatchNorm
# layer and step; at 16 and above it is not worth that price.
SYNC_BATCHNORM_BELOW = 16
# Below this many images per rank a step is too small to keep a GPU busy, and each step's all-reduce
# of the whole gradient is shared by few images.
SMALL_RANK_BATCH = 8


def rank_batch(batch_size: int, dist: DistInfo) -> int:
    """Images per rank and step: [Training] batch_size is the global batch, split over the ranks."""
    return batch_size // dist.world_size


def use_sync_batchnorm(setting: str, model: nn.Module, dist: DistInfo, device: torch.device,
                       batch_size: int) -> bool:
    """[Training] sync_batchnorm (auto, true or false) for this run; only a distributed run on GPUs
    has statistics to share (torch's SyncBatchNorm runs on GPUs only)."""
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not (dist.enabled and has_batchnorm) or setting == "false":
        return False
    if device.type != "cuda":
        if setting == "true":
            raise ConfigError(f"[Training] sync_batchnorm = true: SyncBatchNorm needs CUDA devices (this run trains "
                              f"on {device.type}); use auto or false")
        return False
    return setting == "true" or rank_batch(batch_size, dist) < SYNC_BATCHNORM_BELOW


def warn_small_rank_batch(batch_size: int, dist: DistInfo) -> None:
    per_rank = rank_batch(batch_size, dist)
    if dist.enabled and dist.is_main and per_rank < SMALL_RANK_BATCH:
        logger.warning(f"[Training] batch_size = {batch_size} over {dist.world_size} processes is {per_rank} images "
                       f"per process and step: too few to keep a GPU busy, and every step all-reduces the whole "
                       f"gradient; use batch_size >= {SMALL_RANK_BATCH * dist.world_size} or fewer processes")


def parameters_without_gradient(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> list[str]:
    """Names of the trainable parameters a training step leaves without a gradient (e.g. RAD-DINO's
    mask_token, a transformers ViT's pooler, a timm head that forward_features skips), found by one
    forward and backward pass of random images of `input_shape`. The model is left as it was: its
    buffers (BatchNorm statistics) are restored, the random generators too, no gradient is kept."""
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        model(torch.randn(input_shape, device=device)).float().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.train(was_training)
    return unused


def freeze_unused_parameters(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
                             dist: DistInfo) -> None:
    """Stop the parameters no step trains from requiring a gradient, so that DDP neither waits for
    theirs (it would fail at the second step: "Expected to have finished reduction in the prior
    iteration") nor has to search the graph for unused ones every step (find_unused_parameters).
    The optimizer, already made, keeps them in its groups: they never had a gradient, so nothing
    changes for it, and its checkpoints are the same as a single process's."""
    unused = parameters_without_gradient(model, input_shape, device)
    for name, parameter in model.named_parameters():
        if name in unused:
            parameter.requires_grad_(False)
    if unused and dist.is_main:
        logger.info(f"{len(unused)} parameter{'s' if len(unused) > 1 else ''} without a gradient from this model's "
                    f"forward, left out of DistributedDataParallel: {', '.join(unused[:5])}"
                    f"{', ...' if len(unused) > 5 else ''}")


def wrap_model(model: nn.Module, compiled: bool, dist: DistInfo, device: torch.device) -> nn.Module:
    """The module the loop trains: `model` compiled and/or in DistributedDataParallel. State dicts
    are always taken from `model` itself, so checkpoints never carry the wrappers' key prefixes.

    DDP goes outside the compiled model, as PyTorch's "Where to apply torch.compile?" advises: a
    model compiled while DDP's forward is active is split by dynamo's DDPOptimizer at DDP's bucket
    boundaries, so each bucket's all-reduce still overlaps the rest of the backward pass, and DDP's
    no_sync stays at hand for accumulation."""
    net = torch.compile(model) if compiled else model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return net
