"""Lung masks -> zone maps: each image's six zones drawn from its own lungs.

Invariants:
- A mask file is decoded once into the image cache (decoder "lung_mask"): read like an image
  (src/data/readers.py: PNG as stored, NIfTI oriented like a radiograph), resized exactly as its image
  ([Data] image_size, resize_mode), stored as labels 0 (background) and 1, 2 (its non-zero values in
  increasing order). A file with more than two non-zero values is refused there.
- A zone map is uint8 [S, S] in the cached image's geometry: 0 outside the zones, k + 1 inside zone
  ZONES[k]. Zone maps are made per read from the cached masks (ZoneMaps is indexable like the image
  cache), so memory does not grow with the number of images. With [Data] mask_dir set every image has
  one: from its masks or, under [Data] on_missing_mask = grid, the fixed 3x2 grid's.
- A lung's side comes from where it lies on the image, never from its file name: on a frontal
  radiograph the patient's right lung is on the image's left, so the lung whose centre lies further
  left is the right lung. File names only tell which convention a directory follows (by image side,
  as upstream names them, or by patient side), and a directory follows one.
- [Model] zone_split = lung cuts each lung's own rows (apex to base) into thirds; image cuts the rows
  the image covers, as upstream does.
- Every problem (a file missing, unreadable, empty, not binary, of another size than its image) is one
  MaskError naming the file, raised before any model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from src.config.schema import DataConfig
from src.data.cache import CacheSettings, ImageCache, build_cache, register_decoder
from src.data.preprocess import placement, resize
from src.data.readers import read_image
from src.data.zones import ZONES
from src.utils.errors import DataError, MaskError
from src.utils.logging import logger

if TYPE_CHECKING:
    import torch

MASK_DECODER = "lung_mask"
MASK_EXTENSIONS = (".png", ".nii.gz", ".nii")
PAIR_SUFFIXES = ("_right_lung_mask", "_left_lung_mask")  # upstream's names, right first
NAMINGS = ("image side", "patient side", "label image")
GRID_ROW = -1  # ZoneMaps.lungs entry of an image that gets the grid
_LISTED = 5  # FileIDs named when a directory mixes namings


def reads_masks(data: DataConfig) -> bool:
    """Whether a model trained with `data` reads lung masks: it does when [Data] mask_dir was set."""
    return bool(data.mask_dir)


@register_decoder(MASK_DECODER)
def decode_mask(path: Path, settings: CacheSettings) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
    """A mask file -> its labels (0, then 1, 2 for its non-zero values) resized like its image."""
    try:
        mask = read_image(path)
    except DataError as exc:
        return None, None, str(exc).replace("image file", "mask file")
    values = np.unique(mask)
    values = values[values != 0]
    if len(values) > 2:
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if len(values) > 4 else "")
        return None, None, (f"{path}: mask has {len(values)} non-zero values ({shown}); expected 0 and one value "
                            "per lung")
    labels = np.zeros((settings.image_size, settings.image_size), np.uint8)
    for level, value in enumerate(values, 1):
        labels[resize((mask == value).astype(np.float32), settings.image_size, settings.resize_mode) > 0.5] = level
    return labels, (int(mask.shape[0]), int(mask.shape[1])), ""


def mask_settings(data: DataConfig) -> CacheSettings:
    """The cache settings of lung masks: the images' geometry; intensity settings do not apply."""
    return dataclasses.replace(CacheSettings.from_config(data), clip_low_percentile=0.0, clip_high_percentile=100.0,
                               dtype="uint8", decoder=MASK_DECODER)


def find_masks(mask_dir: str | Path, file_id: str) -> tuple[Path, ...]:
    """The mask files of `file_id`: upstream's pair (right-named, left-named), one label image, or none."""
    mask_dir = Path(mask_dir)
    for ext in MASK_EXTENSIONS:
        pair = tuple(mask_dir / f"{file_id}{suffix}{ext}" for suffix in PAIR_SUFFIXES)
        if any(p.is_file() for p in pair):
            missing, present = sorted(pair, key=Path.is_file)
            if not missing.is_file():
                raise MaskError(f"{missing}: lung mask not found, though the other lung's {present.name} is there")
            return pair
        if (mask_dir / f"{file_id}{ext}").is_file():
            return (mask_dir / f"{file_id}{ext}",)
    return ()


@dataclass
class ZoneMaps:
    """The zone map of every image of an image cache, made when read: `zones[rows]` -> [len(rows), S, S]."""

    masks: ImageCache  # the cached mask files
    lungs: np.ndarray  # [N, 2, 2] per image and side (right, left): (masks row, label), GRID_ROW: the grid
    cuts: np.ndarray  # [N, 2, 2] per image and side: first and last + 1 row cut into thirds
    boxes: np.ndarray  # [N, 4] per image: top, left, height, width of the image in the S x S input
    areas: np.ndarray  # [N, 2] share of the input each lung covers (right, left)
    naming: dict[str, list[str]]  # naming (NAMINGS) -> FileIDs whose masks follow it
    grid: list[str]  # FileIDs that got the grid (on_missing_mask = grid)
    size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.lungs), self.size, self.size

    def __len__(self) -> int:
        return len(self.lungs)

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        out = np.zeros((len(rows), self.size, self.size), np.uint8)
        on_grid = self.lungs[rows, 0, 0] == GRID_ROW
        for k in np.flatnonzero(on_grid):
            out[k] = _grid_map(self.boxes[rows[k]], self.size)
        masked = rows[~on_grid]
        if len(masked):  # the whole batch at once: one read of its masks, its zones by broadcasting
            lungs = self.lungs[masked]  # [M, side, (masks row, label)]
            stored = self.masks.images[lungs[..., 0].ravel()].reshape(len(masked), 2, self.size, self.size)
            inside = stored == lungs[..., 1, None, None].astype(stored.dtype)  # [M, side, S, S]
            cuts = self.cuts[masked]
            points = np.linspace(cuts[..., 0], cuts[..., 1], 4, axis=-1)[..., 1:3]  # as _thirds cuts them
            third = (np.arange(self.size)[:, None] >= points[..., None, :]).sum(-1)  # [M, side, S]: 0 sup .. 2 inf
            zone = (2 * third + np.arange(2)[:, None] + 1).astype(np.uint8)[..., None]  # ZONES index + 1 per row
            # The left lung's zones where the lungs overlap, as drawing right then left did.
            out[~on_grid] = np.where(inside[:, 1], zone[:, 1], inside[:, 0] * zone[:, 0])
        return out


def one_hot_zones(maps: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Zone maps [B, S, S] -> float32 zone masks [B, 6, S, S], channel k 1 inside zone ZONES[k]: what a
    model trained with masks reads after the image channel. A numpy array (the ONNX scorer, without
    torch) or a torch tensor, made on the tensor's own device (src/data/prepare.py)."""
    if isinstance(maps, np.ndarray):
        levels = np.arange(1, len(ZONES) + 1, dtype=maps.dtype)
        return (maps[:, None] == levels[None, :, None, None]).astype(np.float32)
    import torch  # a tensor came in: torch is loaded already

    levels = torch.arange(1, len(ZONES) + 1, dtype=maps.dtype, device=maps.device)
    return (maps[:, None] == levels[None, :, None, None]).float()


def scoring_zones(data: DataConfig, split: str, model_name: str | Path, file_ids: Sequence[str],
                  cache: ImageCache, cache_rows: Sequence[int]) -> ZoneMaps:
    """The zone maps a model trained with lung masks scores new images with: from `data.mask_dir` (today's
    [Data] mask_dir or --masks), else the grid's when on_missing_mask = grid; `model_name` names it in errors."""
    if data.mask_dir:
        return build_zone_maps(cache, file_ids, cache_rows, data, split)
    if data.on_missing_mask == "grid":
        return grid_zone_maps(cache, file_ids, cache_rows, data)
    raise MaskError(f"{model_name}: this model was trained with lung masks; give the images' masks with --masks DIR "
                    "(or [Data] mask_dir), or set [Data] on_missing_mask = grid to score them on the 3x2 grid's zones")


def _thirds(top: int, bottom: int, size: int) -> np.ndarray:
    """Third (0 sup, 1 mid, 2 inf) of every row 0..size-1 when rows top..bottom are cut in three."""
    return np.searchsorted(np.linspace(top, bottom, 4)[1:3], np.arange(size), side="right").astype(np.uint8)


def _grid_map(box: np.ndarray, size: int) -> np.ndarray:
    """The fixed grid's zones over the image's box: its rows in thirds, its left half the right lung's."""
    top, left, height, width = (int(v) for v in box)
    third = _thirds(top, top + height, size)[:, None]
    side = (np.arange(size) >= left + width / 2)[None, :]
    inside = np.zeros((size, size), bool)
    inside[top:top + height, left:left + width] = True
    return np.where(inside, 2 * third + side + 1, 0).astype(np.uint8)


def _rows_of(mask: np.ndarray) -> tuple[int, int]:
    rows = np.nonzero(mask.any(axis=1))[0]
    return int(rows[0]), int(rows[-1]) + 1


def _centre_column(lung: np.ndarray) -> float:
    return float(np.nonzero(lung)[1].mean())


def grid_zone_maps(image_cache: ImageCache, file_ids: Sequence[str], cache_rows: Sequence[int],
                   data: DataConfig) -> ZoneMaps:
    """The grid's zone maps for every listed image: what a model trained with masks scores with when
    images come without them and [Data] on_missing_mask = grid."""
    return _assemble(image_cache, file_ids, cache_rows, data, "lung", [()] * len(file_ids), "grid")


def build_zone_maps(image_cache: ImageCache, file_ids: Sequence[str], cache_rows: Sequence[int],
                    data: DataConfig, split: str) -> ZoneMaps:
    """The zone maps of the listed images (FileID and row in `image_cache`) from the lung masks in
    [Data] mask_dir, decoded once into the cache; refuses any bad mask with a MaskError."""
    mask_dir = Path(data.mask_dir)
    if not mask_dir.is_dir():
        raise MaskError(f"{mask_dir}: [Data] mask_dir is not a directory")
    files = [find_masks(mask_dir, file_id) for file_id in file_ids]
    zones = _assemble(image_cache, file_ids, cache_rows, data, split, files, data.on_missing_mask)
    _refuse_mixed_naming(mask_dir, zones.naming)
    if zones.grid:
        logger.warning(f"{mask_dir}: {len(zones.grid)} image(s) without usable lung masks get the 3x2 grid's zones "
                       f"([Data] on_missing_mask = grid): {', '.join(zones.grid[:10])}"
                       f"{', ...' if len(zones.grid) > 10 else ''}")
    return zones


def _assemble(image_cache: ImageCache, file_ids: Sequence[str], cache_rows: Sequence[int], data: DataConfig,
              split: str, files: Sequence[tuple[Path, ...]], on_missing: str) -> ZoneMaps:
    size, count = data.image_size, len(image_cache.images)
    flat = [path for paths in files for path in paths]
    masks = build_cache(flat, mask_settings(data), data.cache_dir)
    if masks.failures:
        raise MaskError(next(iter(masks.failures.values())))
    boxes = np.array([placement(tuple(shape), size, data.resize_mode) if shape[0] else (0, 0, size, size)
                      for shape in image_cache.original_shapes], dtype=np.int64).reshape(count, 4)
    lungs = np.full((count, 2, 2), GRID_ROW, np.int64)
    cuts = np.zeros((count, 2, 2), np.int64)
    areas = np.zeros((count, 2))
    naming: dict[str, list[str]] = {name: [] for name in NAMINGS}
    grid: list[str] = []
    start = 0
    for file_id, row, paths in zip(file_ids, cache_rows, files):
        entries = list(range(start, start + len(paths)))
        start += len(paths)
        found = _read_lungs(masks, entries, paths, tuple(image_cache.original_shapes[row]))
        if found is None:
            if on_missing == "error":
                where = (f"{paths[0]}: lung mask is empty (no lung drawn)" if paths else
                         f"{Path(data.mask_dir) / file_id}{PAIR_SUFFIXES[0]}.png: lung mask not found (nor a "
                         f"{'/'.join(MASK_EXTENSIONS)} pair or label image of FileID {file_id})")
                raise MaskError(f"{where}; add it or set [Data] on_missing_mask = grid")
            grid.append(file_id)
            top, _, height, _ = boxes[row]
            cuts[row] = (top, top + height)
            continue
        sides, kind = found
        naming[kind].append(file_id)
        lungs[row] = sides
        for side, (entry, label) in enumerate(sides):
            lung = masks.images[int(entry)] == label
            box_top, _, height, _ = boxes[row]
            cuts[row, side] = _rows_of(lung) if split == "lung" else (box_top, box_top + height)
            areas[row, side] = lung.mean()
    return ZoneMaps(masks, lungs, cuts, boxes, areas, naming, grid, size)


def _read_lungs(masks: ImageCache, entries: list[int], paths: tuple[Path, ...], image_shape: tuple[int, int]
                ) -> tuple[list[tuple[int, int]], str] | None:
    """([(masks row, label) of the right lung, of the left lung], naming) of one image, sides taken from
    their position; None when it has no mask or an empty one."""
    for entry, path in zip(entries, paths):
        shape = tuple(int(v) for v in masks.original_shapes[entry])
        if shape != image_shape:
            raise MaskError(f"{path}: mask is {shape[0]}x{shape[1]} (HxW) but its image is "
                            f"{image_shape[0]}x{image_shape[1]}; masks must have their image's size")
    if not paths:
        return None
    labels = [np.asarray(masks.images[entry]) for entry in entries]
    if len(paths) == 2:
        for path, image in zip(paths, labels):
            if (image == 2).any():
                raise MaskError(f"{path}: mask has 2 non-zero values; expected a binary mask (0 and one value) per "
                                "lung file")
        if not labels[0].any() or not labels[1].any():
            return None
        sides = [(entries[0], 1), (entries[1], 1)]
        # The right-named lung lying on the image's left is the patient's right: named by patient side.
        on_left = _centre_column(labels[0] == 1) < _centre_column(labels[1] == 1)
        kind = "patient side" if on_left else "image side"
    else:
        if not labels[0].any():
            return None
        if not (labels[0] == 2).any():
            raise MaskError(f"{paths[0]}: label mask has one non-zero value; expected 0 and one value per lung "
                            "(2 values), or upstream's _right_lung_mask/_left_lung_mask pair")
        sides = [(entries[0], 1), (entries[0], 2)]
        kind = "label image"
    lung_images = [np.asarray(masks.images[entry]) == label for entry, label in sides]
    if _centre_column(lung_images[0]) > _centre_column(lung_images[1]):
        sides = sides[::-1]
    return sides, kind


def _refuse_mixed_naming(mask_dir: str | Path, naming: dict[str, list[str]]) -> None:
    pairs = {name: ids for name, ids in naming.items() if name != "label image" and ids}
    if len(pairs) < 2:
        return
    fewer, more = sorted(pairs, key=lambda name: len(pairs[name]))
    listed = ", ".join(pairs[fewer][:_LISTED])
    raise MaskError(f"{mask_dir}: lung masks named by {more} for {len(pairs[more])} FileID(s) but by {fewer} for "
                    f"{len(pairs[fewer])} ({listed}{', ...' if len(pairs[fewer]) > _LISTED else ''}); a mask "
                    "directory follows one naming: fix those files' names")


def lung_summary(zones: ZoneMaps, cache_rows: Sequence[int]) -> dict[str, float]:
    """Share of the listed images with masks, and the mean share of the input each lung covers."""
    with_masks = zones.lungs[np.asarray(cache_rows), 0, 0] != GRID_ROW
    areas = zones.areas[np.asarray(cache_rows)][with_masks]
    mean = areas.mean(axis=0) if len(areas) else np.zeros(2)
    return {"coverage": float(with_masks.mean()) if len(with_masks) else 0.0,
            "right_area": float(mean[0]), "left_area": float(mean[1])}

