"""DistributedDataParallel plumbing for `torchrun --nproc_per_node=N main.py --mode train`.

One process per device. On GPUs the process group pairs nccl, for the tensors on the GPU (DDP's
gradients, the loop's per-step votes), with gloo for those on the CPU (a metric, a stop request,
the run directory): an nccl group alone cannot reduce a CPU tensor. On CPUs gloo does both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from src.utils.errors import ConfigError

GPU_BACKENDS = "cpu:gloo,cuda:nccl"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed created the process group, so shutdown destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (nccl + gloo on GPUs, gloo on
    CPUs); a group the caller already initialised is used as it is."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(GPU_BACKENDS if device_type == "cuda" else "gloo")
    return DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")), created)


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """This process's GPU in a distributed run: LOCAL_RANK modulo the GPUs it sees, so that both
    torchrun's N processes over a node's N GPUs and Slurm's --gpus-per-task=1 (each process sees
    only its own GPU, as cuda:0) work."""
    if not info.enabled or device.type != "cuda":
        return device
    visible = torch.cuda.device_count()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if visible > 1 and per_node > visible:
        raise ConfigError(f"{per_node} processes on this node share {visible} GPUs: start one process per GPU "
                          f"(torchrun --nproc_per_node={visible}, or Slurm's --gpus-per-task=1)")
    return torch.device("cuda", info.local_rank % visible)


def _collective_device() -> torch.device:
    """Where a small tensor must be for a collective of the default group: on the CPU, unless the
    group is nccl alone (one a caller created), whose tensors live on this process's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` on every rank."""
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def average_scalar(value: float, count: int, info: DistInfo) -> float:
    """Count-weighted mean of a per-rank average over all ranks."""
    if not info.enabled:
        return value
    totals = torch.tensor([value * count if count else 0.0, float(count)], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether `flag` is set on any rank: the same answer on every rank."""
    if not info.enabled:
        return flag
    vote = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def max_over_ranks_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`tensor` replaced in place by its element-wise maximum over the ranks (on its own device: queued
    behind the step's work on a GPU, nothing waits for it here)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        any_rank(False, info)  # an all-reduce: on the group's CPU backend when it has one


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
