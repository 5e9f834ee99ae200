"""check mode: load and validate config, labels and images without training, then summarise."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click
import numpy as np

from src.config.schema import Config
from src.data.consensus import reader_names
from src.data.load import load_data, prebuild_cache_part
from src.data.masks import ZoneMaps, lung_summary
from src.data.readers import file_extension
from src.data.summary import label_counts, split_counts


def _size_range(shapes: np.ndarray) -> str:
    known = shapes[shapes[:, 0] > 0].astype(np.int64)
    if not len(known):
        return "none decoded"
    pixels = known[:, 0] * known[:, 1]
    smallest, median, largest = (known[np.argsort(pixels)[k]] for k in (0, len(known) // 2, -1))
    return " / ".join(f"{h}x{w}" for h, w in (smallest, median, largest)) + " (min / median / max, HxW)"


def _masks_line(zones: ZoneMaps, cache_rows: np.ndarray, mask_dir: str) -> str:
    """Coverage, naming and lung areas of a data set's masks."""
    summary = lung_summary(zones, cache_rows)
    namings = ", ".join(f"by {name} {len(ids)}" if name != "label image" else f"label images {len(ids)}"
                        for name, ids in zones.naming.items() if ids) or "none"
    return (f"{mask_dir}: {summary['coverage']:.0%} of images with lung masks ({len(zones.grid)} on the grid); "
            f"named {namings}; lung area right {summary['right_area']:.1%} / left {summary['left_area']:.1%} "
            f"of the input (mean); cached in {zones.masks.path.name} ({zones.masks.decoded} decoded now)")


def _features_line(cfg: Config, bundle) -> str:
    """Build (or find) the frozen backbone's feature cache training will read, and say what it holds."""
    from src.training.feature_cache import prebuild_feature_cache, uses_feature_cache  # imports torch

    if not uses_feature_cache(cfg):
        return "not cached: a distillation teacher reads the images"
    cache = prebuild_feature_cache(cfg, bundle)
    features = cache.features
    return (f"{cache.path} ({cache.computed} computed now, {len(features) - cache.computed} reused; "
            f"{len(features)} x {features.shape[1]}x{features.shape[2]} {features.dtype}, "
            f"{features.nbytes / 2**20:.1f} MiB)")


def run_check(cfg: Config, options: dict[str, Any]) -> None:
    if options.get("shard"):  # only the cache: the weights are the check's without --shard
        part, parts = options["shard"]
        decoded, missing = prebuild_cache_part(cfg.data, part, parts)
        click.echo(f"Cache part {part}/{parts}: {decoded} image(s) decoded now into {cfg.data.cache_dir}; "
                   f"{missing} still missing (other parts'; run --mode check without --shard to finish and check)")
        return
    m = cfg.model
    if m.pretrained or m.pretrained_path or m.pretrained_weights:
        from src.models.zoo import check_weights  # imports torch (a second): only when weights are asked for

        check_weights(m)  # the pretrained weights asked for are at hand (or may be downloaded)
    if m.freeze.startswith("all_but_last:"):
        from src.models.freeze import check_freeze  # imports torch: only when there are blocks to count

        check_freeze(cfg)  # the backbone has that many blocks
    bundle = load_data(cfg, with_outcome=True)
    table, cache = bundle.table, bundle.cache
    formats = Counter(file_extension(p) for p in table["path"])
    echo = click.echo
    echo(f"Config        {options['config_path']} (valid)")
    echo(f"Labels        {cfg.data.labels_csv}: {len(table) + len(bundle.skipped)} rows, "
         f"{len(table)} usable, {len(bundle.skipped)} skipped")
    echo(f"Formats       {', '.join(f'{ext} {n}' for ext, n in formats.most_common())}")
    echo(f"Image sizes   {_size_range(cache.original_shapes)}")
    images = cache.images
    echo(f"Cache         {cache.path} ({cache.decoded} decoded now, {images.shape[0] - cache.decoded} reused; "
         f"{images.shape[0]} x {images.shape[1]}x{images.shape[2]} {images.dtype}, {images.nbytes / 2**20:.1f} MiB)")
    if bundle.zones is not None:
        echo(f"Lung masks    {_masks_line(bundle.zones, table['cache_index'].to_numpy(), cfg.data.mask_dir)}")
    readers = reader_names(table)
    if readers:
        echo(f"Readers       {len(readers)} ({', '.join(readers)}); the zones are their consensus "
             f"([Data] consensus = {cfg.data.consensus})")
    if "outcome" in table:
        outcome = table["outcome"]
        echo(f"Outcome       {cfg.evaluation.outcome_column}: {int((outcome == 1).sum())} positive, "
             f"{int((outcome == 0).sum())} negative, {int(outcome.isna().sum())} not known")
    if cfg.model.freeze == "backbone" and cfg.training.feature_cache:
        echo(f"Features      {_features_line(cfg, bundle)}")
    echo("\nZone scores (images per class)")
    echo(label_counts(table).to_string())
    echo("\nSplit")
    echo(split_counts(table).to_string())
    if len(bundle.skipped):
        echo("\nSkipped (on_missing = skip)")
        echo(bundle.skipped.to_string(index=False))
    if options.get("preview"):
        from src.data.preprocess import Normalization
        from src.evaluation.preview import write_preview  # imports torch (the dataset): only when asked

        path = write_preview(bundle, Normalization.of(cfg.data), options["preview"], cfg.training.seed,
                             options.get("output") or "preview.png", str(cfg.data.labels_csv))
        echo(f"\nPreview       {path}: {min(options['preview'], len(table))} images as the model receives them")
