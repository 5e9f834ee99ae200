"""make bench, lung masks: accuracy of mask pooling against the fixed grid on pose-varied demo data, and
the cost of upstream's six masked backbone passes against one pooled pass (scripts/benchmark.py: masks)."""

from __future__ import annotations

import time
from collections.abc import Callable

from benchlib import Bench, Measure, Row, Section, Target, alternate

POSE = 4.0  # demo positioning times this: up to 16 degrees of tilt, 28% zoom, 16% of the side off-centre


def _accuracy(bench: Bench, base_config: Callable) -> Row:
    """Best validation macro F1 of the same training with the grid and with lung-mask pooling, paired by seed."""
    import make_demo_data

    from src.training.trainer import train_model

    n_images, size = bench.size(400, 24), bench.size(96, 32)
    epochs, seeds = bench.size(12, 1), bench.size((1, 2, 3), (1,))
    demo = bench.scratch / "masks" / "demo"
    make_demo_data.write_demo_data(demo, n_images=n_images, size=size, seed=0, workers=1, pose=POSE)
    f1: dict[str, list[float]] = {"grid": [], "masks": []}
    variants = {"grid": {"Model.zone_pooling": "regional"}, "masks": {"Data.mask_dir": demo / "masks"}}
    for seed in seeds:
        for name, values in variants.items():
            cfg = base_config(**{
                "Data.labels_csv": str(demo / "labels.csv"), "Data.image_dir": str(demo / "images"),
                "Data.cache_dir": str(bench.scratch / "masks" / "cache"), "Data.image_size": size,
                "Model.model_arch": "custom_cnn", "Training.n_epochs": epochs, "Training.seed": seed,
                "Training.precision": "fp32", "Callbacks.early_stopping_patience": 0,
                "Training.output_dir": str(bench.scratch / "masks" / name),
                "Logging.log_dir": str(bench.scratch / "masks" / "logs"), **{k: str(v) for k, v in values.items()}})
            f1[name].append(train_model(cfg).best_metrics["val_f1_macro"])
    return Row(f"pose-varied demo (x{POSE:g} positioning, {n_images} images), custom_cnn {size} px, {epochs} epochs: "
               f"best validation macro F1, median of seeds {', '.join(map(str, seeds))}",
               Measure("3x2 grid (zone_pooling = regional)", f1["grid"], ""),
               Measure("lung-mask pooling (zone_focus = pool)", f1["masks"], ""),
               Target("ratio", ">=", 1.0, "masks at least as accurate as the grid"))


def _passes_rates(bench: Bench, base_config: Callable) -> dict[str, list[float]]:
    """Training images/s of one model (custom_cnn with masks) pooling in one pass and masking in six."""
    import torch

    from src.engine.settings import LoopSettings
    from src.models.factory import build_model
    from src.training.loop import train_epoch
    from src.training.loss import WeightedCSILoss
    from src.training.optimizer import create_optimizer

    size, batch, steps = bench.size(128, 32), bench.size(16, 2), bench.size(4, 1)
    generator = torch.Generator().manual_seed(0)
    data = []
    for _ in range(steps):
        maps = torch.randint(0, 7, (batch, 1, size, size), generator=generator)
        zones = (maps == torch.arange(1, 7)[None, :, None, None]).float()
        data.append((torch.cat([torch.randn(batch, 1, size, size, generator=generator), zones], 1),
                     torch.randint(0, 5, (batch, 6), generator=generator), [""] * batch))
    runs, cpu, settings = {}, torch.device("cpu"), LoopSettings(progress=False)
    for focus in ("pool", "zero_mask"):
        cfg = base_config(**{"Model.model_arch": "custom_cnn", "Data.image_size": size, "Data.mask_dir": "masks",
                             "Model.zone_focus": focus})
        torch.manual_seed(0)
        model = build_model(cfg)
        runs[focus] = (model, create_optimizer(model, cfg))
        train_epoch(model, data[:1], WeightedCSILoss(), runs[focus][1], cpu, 0, settings)  # warm-up

    def rate(focus: str) -> float:
        model, optimizer = runs[focus]
        started = time.perf_counter()
        train_epoch(model, data, WeightedCSILoss(), optimizer, cpu, 1, settings)
        return steps * batch / (time.perf_counter() - started)

    return alternate({focus: (lambda f=focus: rate(f)) for focus in runs}, bench.rounds)


def masks_section(bench: Bench, base_config: Callable) -> Section:
    """The section; `base_config(**values)` is benchmark.py's config of schema defaults with `values`."""
    size, batch = bench.size(128, 32), bench.size(16, 2)
    rates = _passes_rates(bench, base_config)
    rows = [Row(f"training images/s, custom_cnn {size} px batch {batch} with masks, fp32: six masked passes "
                "(upstream) vs one pooled pass", Measure("zone_focus = zero_mask (6 passes)", rates["zero_mask"],
                                                         "img/s"),
                Measure("zone_focus = pool (1 pass)", rates["pool"], "img/s"),
                Target("ratio", ">=", 3.0, "one pass at least 3x the six"))]
    rows.append(_accuracy(bench, base_config))
    return Section("Lung masks", rows, notes=[
        f"Accuracy: demo data drawn with {POSE:g} times the usual positioning, so the chest is tilted and off-centre; "
        "the same seeds (split, initialisation, data order) for both, which differ only in how each zone head pools.",
        "Cost: the same custom_cnn and batches; the six passes run as one backbone call on six times the images."])
