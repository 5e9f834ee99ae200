"""Training throughput of the real training step, per precision and memory format.

`make bench` runs it: ResNet50 at 224 px on this machine's device, fp32 vs bf16 autocast +
channels_last (and fp16 on CUDA). Images per second of train_epoch on synthetic batches.
"""

from __future__ import annotations

import argparse
import time

import torch

from src.config.loader import apply_overrides, load_config
from src.models.factory import build_model
from src.training.loop import LoopSettings, place_model, train_epoch
from src.training.loss import WeightedCSILoss
from src.training.optimizer import create_optimizer
from src.utils.device import resolve_device


def measure(arch: str, size: int, batch: int, steps: int, dtype: torch.dtype, channels_last: bool,
            device: torch.device) -> float:
    cfg = apply_overrides(load_config(None, env={}), {"Model.model_arch": arch, "Model.pretrained": False,
                                                      "Data.image_size": size})
    torch.manual_seed(0)
    settings = LoopSettings(dtype=dtype, channels_last=channels_last, progress=False,
                            scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None)
    model = place_model(build_model(cfg), device, settings)
    data = [(torch.randn(batch, 1, size, size), torch.randint(0, 5, (batch, 6)), [""] * batch)
            for _ in range(steps + 1)]
    optimizer = create_optimizer(model, cfg)
    train_epoch(model, data[:1], WeightedCSILoss(), optimizer, device, 0, settings)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train_epoch(model, data[1:], WeightedCSILoss(), optimizer, device, 1, settings)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    variants = [("fp32", torch.float32, False), ("bf16 + channels_last", torch.bfloat16, True)]
    if device.type == "cuda":
        variants.append(("fp16 + channels_last", torch.float16, True))
    print(f"{args.arch} {args.size}px batch {args.batch} on {device} ({torch.get_num_threads()} threads)")
    baseline = None
    for name, dtype, channels_last in variants:
        rate = measure(args.arch, args.size, args.batch, args.steps, dtype, channels_last, device)
        baseline = baseline or rate
        print(f"  {name:<22} {rate:8.1f} img/s   x{rate / baseline:.2f}")


if __name__ == "__main__":
    main()
