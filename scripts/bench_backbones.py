"""Child process of benchmark.py's backbones comparison: training images/s of one backbone at one
size in fp32 and in bf16 + channels_last, alternating, printed as JSON. A process of its own, so
that the parent can sample its peak memory (the backbone's, not the benchmark's).

    python scripts/bench_backbones.py ARCH SIZE BATCH STEPS ROUNDS
"""

from __future__ import annotations

import json
import sys

from benchmark import _images_per_second

if __name__ == "__main__":
    import torch

    arch, size, batch, steps, rounds = sys.argv[1], *map(int, sys.argv[2:6])
    variants = {"fp32": (torch.float32, False), "bf16 + channels_last": (torch.bfloat16, True)}
    rates = _images_per_second(arch, size, batch, steps, torch.device("cpu"), variants, rounds)
    print(json.dumps(rates))
