"""make bench, fine-tuning: RAD-DINO's one feature pass and heads-only epochs on its cached features against full
fine-tuning on this CPU, a 20-trial search of head settings on those features, four transfer recipes on pose-varied
data, and EMA of the weights against none (scripts/benchmark.py: finetune)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchlib import Bench, Measure, Row, Section, Target, alternate

POSE = 4.0  # the transfer data's positioning, as the masks comparison draws it
HEAD_SPACE = {"Training.learning_rate": "loguniform(1e-4, 3e-2)", "Model.dropout": "uniform(0.0, 0.7)",
              "Optimization.weight_decay": "loguniform(1e-6, 1e-2)", "Loss.unknown_weight": "uniform(0.1, 1.0)",
              "Training.batch_size": "choice(8, 16, 32)"}


def write_project(root: Path, labels: Path, images: Path, sections: dict[str, dict]) -> Path:
    """A config.ini under `root` reading `labels`/`images`, writing under `root`, with `sections` added."""
    base = {"Data": {"labels_csv": labels, "image_dir": images, "cache_dir": root.parent / "cache"},
            "Training": {"output_dir": root / "models", "precision": "fp32"},
            "Model": {"pretrained": "false"}, "Logging": {"log_dir": root / "logs"}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.ini"
    path.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in base.items()))
    return path


def _raddino(bench: Bench) -> tuple[list[Row], list[str]]:
    """The feature pass, per-image epoch cost of the heads against full fine-tuning, and a 20-trial study."""
    import numpy as np
    import pandas as pd
    import torch
    import transformers

    from src.config.loader import load_config
    from src.data.augment import BatchAugmenter
    from src.data.dataset import make_loader
    from src.data.load import load_data
    from src.data.prepare import BatchPreparer
    from src.data.preprocess import Normalization
    from src.engine.settings import LoopSettings
    from src.models.factory import build_model
    from src.models.heads import PooledHead
    from src.models.zoo import resolve_preprocessing
    from src.models.zoo.hf_models import RADDINO_CONFIG
    from src.optimization.runner import run_study
    from src.training.feature_cache import FeatureDataset, build_feature_cache
    from src.training.loop import train_epoch
    from src.training.loss import WeightedCSILoss
    from src.training.optimizer import create_optimizer

    size, n_images = bench.size(518, 56), bench.size(16, 8)
    full_batch, head_rows, trials, epochs = bench.size(2, 2), bench.size(512, 64), bench.size(20, 2), bench.size(5, 1)
    root = bench.scratch / "finetune" / "raddino"
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "labels.csv"
    pd.read_csv(bench.demo / "labels.csv", sep=";", dtype=str, keep_default_na=False).head(n_images).to_csv(
        labels, sep=";", index=False)
    # RAD-DINO's architecture with random weights, kept as a snapshot directory as its real weights would be: every
    # build (each trial's) loads it rather than initialising 86 M weights afresh.
    snapshot = root / "raddino-random"
    torch.manual_seed(0)
    transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**RADDINO_CONFIG)).save_pretrained(snapshot)
    path = write_project(root, labels, bench.demo / "images", {
        "Data": {"image_size": size, "train_fraction": 0.85, "val_fraction": 0.15, "test_fraction": 0.0},
        "Model": {"model_arch": "raddino", "pretrained_path": snapshot, "freeze": "backbone"},
        "Evaluation": {"batch_size": 8},
        "Augmentation": {"enabled": "false"},
        "Hyperopt": {"n_trials": trials, "max_epochs": epochs, "study_name": "heads", "output_dir": root / "hyperopt",
                     **HEAD_SPACE}})
    cfg = resolve_preprocessing(load_config(path, env={}))
    data = load_data(cfg)
    cpu = torch.device("cpu")
    model = build_model(cfg)
    started = time.perf_counter()
    cache = build_feature_cache(model, cfg, data, cpu)
    pass_seconds = time.perf_counter() - started
    feature_rate = len(cache.rows) / pass_seconds

    # Heads: an epoch of head_rows cached rows (the pass's images, read over and over from the store).
    rows = np.arange(head_rows) % len(cache.rows)
    labels_drawn = torch.randint(0, 5, (head_rows, 6), generator=torch.Generator().manual_seed(0)).numpy()
    heads_loader = make_loader(FeatureDataset(cache.features, rows, labels_drawn, [""] * head_rows), 32, shuffle=True)
    heads = PooledHead(model.head)
    heads_optimizer = torch.optim.Adam(heads.parameters(), lr=1e-3)
    # Full fine-tuning: a fresh RAD-DINO, every weight trained, with the default augmentation, in batches of 2.
    full = {"model": build_model(cfg)}
    full["optimizer"] = create_optimizer(full["model"], cfg)
    full_loader = make_loader(data.dataset("train"), full_batch, shuffle=True, limit=full_batch)
    prepare_full = BatchPreparer(Normalization.of(cfg.data), BatchAugmenter(load_config(None, env={}).augmentation))
    settings, criterion = LoopSettings(progress=False), WeightedCSILoss()

    def seconds_per_image(name: str) -> float:
        if name == "full":
            epoch = train_epoch(full["model"], full_loader, criterion, full["optimizer"], cpu, 1, settings,
                                prepare=prepare_full)
            return epoch["epoch_seconds"] / full_batch
        epoch = train_epoch(heads, heads_loader, criterion, heads_optimizer, cpu, 1, settings)
        return epoch["epoch_seconds"] / head_rows

    seconds_per_image("full"), seconds_per_image("heads")  # warm-up: oneDNN picks its kernels on the first batches
    # Two rounds: a full fine-tuning step of RAD-DINO at 518 px takes seconds to minutes on 2 cores.
    per_image = alternate({"full": lambda: seconds_per_image("full"), "heads": lambda: seconds_per_image("heads")},
                          min(bench.rounds, 2))
    full.clear()  # RAD-DINO's weights and Adam moments, 1 GiB: not kept through the study
    started = time.perf_counter()
    study = run_study(load_config(path, env={})).study
    study_seconds = time.perf_counter() - started
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    rows_out = [
        Row(f"RAD-DINO {size} px (random weights, from a snapshot directory), fp32: the one feature pass over "
            f"{len(cache.rows)} train + val images (weights digest included)", None,
            Measure("feature pass", [feature_rate], "img/s")),
        Row(f"RAD-DINO {size} px: training time per image of an epoch, full fine-tuning (batch {full_batch}, "
            f"augmented) vs the zone heads on cached features (batch 32, {head_rows} rows)",
            Measure("full fine-tuning", per_image["full"], "s/img"),
            Measure("heads on cached features", per_image["heads"], "s/img"),
            Target("ratio", "<=", 0.01, "≥ 100x faster per epoch")),
        Row(f"wall time of a {trials}-trial study of head settings (learning rate, dropout, weight decay, Unknown "
            f"weight, batch size; up to {epochs} epochs, median pruner) on RAD-DINO's cached features, "
            f"{len(cache.rows)} images", None, Measure("hyperopt on cached features", [study_seconds], "s")),
    ]
    full_epoch = statistics.median(per_image["full"])
    notes = [
        f"RAD-DINO: {len(cache.rows)} demo images at {size} px; the feature pass took {pass_seconds:.1f} s "
        f"({feature_rate:.2f} img/s). A 500-image epoch: full fine-tuning "
        f"{500 * full_epoch / 60:.1f} min at the measured rate, the heads "
        f"{500 * statistics.median(per_image['heads']):.3f} s.",
        f"The study: {len(complete)} trials complete, {pruned} pruned, best validation macro F1 "
        f"{study.best_value:.3f}; every trial loads RAD-DINO from its snapshot, digests its weights (which finds the "
        "features) and writes checkpoints of the whole model (the frozen backbone included, as export needs it).",
    ]
    return rows_out, notes


def _test_f1(model, cfg, data) -> tuple[float, tuple[float, float]]:
    """Test macro F1 of `model` (trained per `cfg`) and its 95% bootstrap interval (patients resampled)."""

    import torch

    from src.data.dataset import make_loader
    from src.data.prepare import BatchPreparer
    from src.data.preprocess import Normalization
    from src.engine.metrics import compute_all_metrics
    from src.engine.predict import predict_batches
    from src.engine.settings import LoopSettings
    from src.evaluation.bootstrap import BootstrapSettings, metric_intervals, resampling_units
    from src.models.zoo import resolve_preprocessing

    normalization = Normalization.of(resolve_preprocessing(cfg).data)  # the one the model was trained with
    test = data.dataset("test")
    result = predict_batches(model, make_loader(test, 64, shuffle=False, keep_all=True), torch.device("cpu"),
                             LoopSettings(progress=False), prepare=BatchPreparer(normalization))
    rows = data.table[data.table["split"] == "test"]
    units = resampling_units(result.file_ids, rows["PatientID"].tolist() if "PatientID" in rows else None)
    ev = cfg.evaluation
    metrics = compute_all_metrics(result.targets, result.probs.argmax(-1), result.probs,
                                  ahf_low=ev.ahf_low_threshold, ahf_high=ev.ahf_high_threshold)
    intervals = metric_intervals(result.targets, result.probs.argmax(-1), result.probs, units,
                                 BootstrapSettings(ev.bootstrap_samples, ev.bootstrap_seed),
                                 ev.ahf_low_threshold, ev.ahf_high_threshold)
    return metrics["f1_macro"], intervals["f1_macro"]


def _transfer(bench: Bench) -> tuple[list[Row], list[str]]:
    """Pretrain custom_cnn on the demo data, then four recipes on a 60-image pose-varied training set."""
    import make_demo_data

    from src.config.loader import apply_overrides, load_config
    from src.data.load import load_data
    from src.training.trainer import train_model

    size, epochs, pretrain_epochs = bench.size(64, 32), bench.size(15, 1), bench.size(10, 1)
    n_images = bench.size(200, 24)
    root = bench.scratch / "finetune" / "transfer"
    pretrain = write_project(root / "pretrain", bench.demo / "labels.csv", bench.demo / "images", {
        "Data": {"image_size": size}, "Model": {"model_arch": "custom_cnn"},
        "Training": {"n_epochs": pretrain_epochs}, "Callbacks": {"early_stopping_patience": 0}})
    source = train_model(load_config(pretrain, env={}))
    pose = root / "pose"
    make_demo_data.write_demo_data(pose, n_images=n_images, size=size, seed=7, workers=1, pose=POSE)
    # 30% of the images (about 60, whole patients) train, 10% validate, 60% test.
    target = write_project(root / "target", pose / "labels.csv", pose / "images", {
        "Data": {"image_size": size, "train_fraction": 0.3, "val_fraction": 0.1, "test_fraction": 0.6},
        "Model": {"model_arch": "custom_cnn", "pretrained_path": source.run_dir / "best_model.pth"},
        "Training": {"n_epochs": epochs, "seed": 3}, "Callbacks": {"early_stopping_patience": 0}})
    cfg = load_config(target, env={})
    data = load_data(cfg)
    counts = data.table["split"].value_counts()
    recipes = {"(a) linear probe (freeze = backbone, cached features)": {"Model.freeze": "backbone"},
               "(b) freeze = all_but_last:1": {"Model.freeze": "all_but_last:1"},
               "(c) full fine-tune (freeze = none)": {"Model.freeze": "none"},
               "(d) from scratch (no pretrained_path)": {"Model.pretrained_path": ""}}
    scores = {}
    for name, values in recipes.items():
        recipe = apply_overrides(cfg, {**values, "Training.run_name": name[1]})
        result = train_model(recipe, data)
        scores[name] = _test_f1(result.model, recipe, data)
    scratch = list(recipes)[-1]
    baseline = Measure(f"{scratch} {scores[scratch][0]:.3f} (95% CI {scores[scratch][1][0]:.3f}-"
                       f"{scores[scratch][1][1]:.3f})", [scores[scratch][0]], "")
    rows = [Row(f"transfer to pose-varied demo data (x{POSE:g} positioning), {counts.get('train', 0)} training "
                f"images, custom_cnn {size} px, {epochs} epochs: test macro F1 ({counts.get('test', 0)} images)",
                baseline, Measure(f"{name} {f1:.3f} (95% CI {low:.3f}-{high:.3f})", [f1], ""))
            for name, (f1, (low, high)) in scores.items() if name != scratch]
    notes = [f"Transfer: custom_cnn pretrained {pretrain_epochs} epochs on the demo data ({bench.demo.name}, best "
             f"validation macro F1 {source.best_metrics['val_f1_macro']:.3f}), its best_model.pth the pretrained_path "
             f"of the target runs; target data drawn with seed 7 and {POSE:g}x the positioning, split by patient into "
             f"{counts.get('train', 0)} train / {counts.get('val', 0)} val / {counts.get('test', 0)} test images; "
             "best epoch by validation macro F1; 95% CI: 1000 bootstrap resamples of the test patients. The "
             "linear probe trains on cached features, hence without augmentation; the others with the default "
             "augmentation."]
    return rows, notes


def _ema(bench: Bench) -> tuple[Row, str]:
    """Best validation macro F1 with and without an EMA of the weights, paired by seed."""
    from src.config.loader import apply_overrides, load_config
    from src.training.trainer import train_model

    size, epochs, seeds, decay = bench.size(64, 32), bench.size(6, 1), bench.size((1, 2, 3), (1,)), 0.9
    root = bench.scratch / "finetune" / "ema"
    cfg = load_config(write_project(root, bench.demo / "labels.csv", bench.demo / "images", {
        "Data": {"image_size": size}, "Model": {"model_arch": "custom_cnn"},
        "Training": {"n_epochs": epochs}, "Callbacks": {"early_stopping_patience": 0}}), env={})
    f1: dict[float, list[float]] = {0.0: [], decay: []}
    for seed in seeds:
        for ema in f1:
            run = apply_overrides(cfg, {"Training.seed": seed, "Training.ema_decay": ema,
                                        "Training.run_name": f"ema{ema}_seed{seed}"})
            f1[ema].append(train_model(run).best_metrics["val_f1_macro"])
    row = Row(f"demo data, custom_cnn {size} px, {epochs} epochs: best validation macro F1, median of seeds "
              f"{', '.join(map(str, seeds))}", Measure("no EMA", f1[0.0], ""),
              Measure(f"ema_decay = {decay}", f1[decay], ""))
    return row, (f"EMA: the same seeds (split, initialisation, data order) with and without an average of decay "
                 f"{decay} (about the last {1 / (1 - decay):.0f} steps, an epoch of the demo data at batch 32); "
                 f"per seed, no EMA {[round(v, 3) for v in f1[0.0]]}, EMA {[round(v, 3) for v in f1[decay]]}.")


def finetune_section(bench: Bench) -> Section:
    rows, notes = _raddino(bench)
    transfer_rows, transfer_notes = _transfer(bench)
    ema_row, ema_note = _ema(bench)
    return Section("Fine-tuning", rows + transfer_rows + [ema_row], notes=notes + transfer_notes + [ema_note])
