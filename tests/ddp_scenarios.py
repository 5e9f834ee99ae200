"""What each rank of tests/test_distributed.py's two-process gloo run does:
`python -m tests.ddp_scenarios OUT CONFIG...` with torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). One launch runs every scenario (each launch costs two interpreters'
start-up); each rank writes what it saw to OUT/rank<R>.json for the tests to compare."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = timedelta(seconds=120)  # a rank left waiting in a collective fails instead of hanging the test


def _same_on_every_rank(model: nn.Module) -> bool:
    """Whether every rank holds exactly these weights."""
    mine = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return all(torch.equal(other[name], tensor) for other in gathered for name, tensor in mine.items())


def nonfinite() -> dict:
    """Four steps of a small CNN in DDP, rank 1's second batch holding a NaN pixel (a corrupt image):
    per optimizer, what each rank's train_epoch reports and whether the weights agree."""
    from src.engine.settings import LoopSettings
    from src.training.loop import train_epoch
    from src.training.loss import WeightedCSILoss
    from src.utils.distributed import DistInfo

    rank = dist.get_rank()
    info = DistInfo(rank, dist.get_world_size(), rank)
    result = {}
    for name in ("adam", "sgd"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                              nn.Linear(16, 30), nn.Unflatten(1, (6, 5)))
        initial = [p.detach().clone() for p in model.parameters()]
        optimizer = (torch.optim.Adam(model.parameters(), lr=0.01, fused=True) if name == "adam"
                     else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        generator = torch.Generator().manual_seed(rank)
        batches = [(torch.rand(2, 1, 8, 8, generator=generator), torch.randint(0, 5, (2, 6), generator=generator),
                    ["x", "y"]) for _ in range(4)]
        if rank == 1:
            batches[1][0][0, 0, 3, 3] = float("nan")
        metrics = train_epoch(nn.parallel.DistributedDataParallel(model), batches, WeightedCSILoss(), optimizer,
                              torch.device("cpu"), 1, LoopSettings(progress=False, dist=info))
        result[name] = {"skipped_steps": metrics["skipped_steps"], "train_loss": metrics["train_loss"],
                        "weights_agree": _same_on_every_rank(model),
                        "trained": not all(torch.equal(a, b) for a, b in zip(initial, model.parameters()))}
    return result


def train_configs(configs: list[str]) -> dict:
    """train_model on each config in turn, in one process group: per config, its history and
    whether the ranks' weights agree at the end."""
    from src.config.loader import load_config
    from src.training.trainer import train_model

    result = {}
    for path in configs:
        trained = train_model(load_config(path, env={}))
        agree = _same_on_every_rank(trained.model)  # a collective: rank 0 has written its files by now
        history = json.loads((trained.run_dir / "logs" / "training_history.json").read_text())
        result[path] = {"history": history, "weights_agree": agree}
    return result


if __name__ == "__main__":
    out, *configs = sys.argv[1:]
    dist.init_process_group("gloo", timeout=TIMEOUT)
    outcome = {"nonfinite": nonfinite(), "trained": train_configs(configs)}
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()
