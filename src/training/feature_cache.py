"""A frozen backbone's pooled zone features, computed once per image and kept beside the image cache.

With [Model] freeze = backbone the backbone's output never changes during training, so each image
needs it once: the zone heads then train on it with no backbone pass, every epoch, and every later
run, hyperopt trial, sweep run and cv fold finds it on disk. It lives here, in training, because it
takes a model to compute (src/data sits below the models) and training alone reads it.

Invariants (those of src/data/cache, whose shards, manifests, locks and reader it uses):
- A store holds the features of one backbone seen one way: it is named by the digest of its
  FeatureSettings, which holds the image cache's settings (the pixels), the input normalisation, the
  architecture, how the heads pool, and a digest of every tensor of the backbone's state. Other
  weights, preprocessing or pooling: another store.
- An entry is keyed by its image's cache entry (the file's path, size and mtime); with lung masks also
  by a digest of its zone map, so changed masks are new entries.
- An entry is what ZoneHead.pool gives for its image, [k, C] float32 (k = 1 for global pooling, 6
  otherwise): every head pools before it classifies, so the pooled vectors are all it reads (a few KiB
  per image rather than the map).
- Features are computed in eval mode, in fp32, in batches of [Evaluation] batch_size, without a
  DataLoader: torch's random state is left as it was, so a run reading the cache draws the same
  dropout masks as one running the backbone.
- Shards, resuming after a kill, sharing the work between processes and reading in O(1) memory are
  the image cache's (src/data/cache/__init__.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from src.config.schema import Config
from src.data.cache import CacheSettings, ShardedImages
from src.data.cache.build import plan_shards, write_shards
from src.data.cache.keys import KEY_DTYPE, Decoded, entry_keys
from src.data.cache.store import check_readable, read_index, remove_abandoned, store_dir
from src.data.dataset import CSIDataset
from src.data.load import DataBundle
from src.data.prepare import BatchPreparer
from src.data.preprocess import Normalization
from src.models.factory import CSIModel, build_model
from src.models.zoo import resolve_preprocessing
from src.utils.device import resolve_device
from src.utils.logging import logger
from src.utils.seed import seed_everything

FEATURE_FORMAT = 1
FEATURES_DIR = "features"  # under [Data] cache_dir, beside the image stores
TRAINED_SPLITS = ("train", "val")  # what training reads; every cv fold's train and val are among them


def uses_feature_cache(cfg: Config) -> bool:
    """Whether training reads cached features: a frozen backbone, the cache on, and no teacher (which
    needs the images)."""
    return (cfg.model.freeze == "backbone" and cfg.training.feature_cache
            and not cfg.distillation.teacher_checkpoint)


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of every tensor of `module`'s state (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that changes the cached features (see the module docstring)."""

    images: str  # digest of the image cache's CacheSettings
    mean: float
    std: float
    arch: str
    pooling: str  # ZoneHead's pooling and the model's zone focus
    weights: str  # weights_digest of the backbone
    vectors: int  # 1 (global pooling) or 6
    channels: int
    dtype: str = "float32"
    version: int = FEATURE_FORMAT

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def entry_shape(self) -> tuple[int, int]:
        return self.vectors, self.channels

    def entry_bytes(self) -> int:
        return self.vectors * self.channels * np.dtype(self.dtype).itemsize


def feature_settings(model: CSIModel, cfg: Config) -> FeatureSettings:
    """`cfg`: resolved (its [Data] normalisation is the weights')."""
    head, normalization = model.head, Normalization.of(cfg.data)
    vectors = 1 if head.pooling == "global" else 6
    return FeatureSettings(CacheSettings.from_config(cfg.data).digest(), normalization.mean,
                           normalization.std, model.arch_name,
                           f"{head.pooling}/{model.focus}", weights_digest(model.backbone), vectors,
                           head.classifiers[0][1].in_features)


@dataclass
class FeatureCache:
    features: ShardedImages  # [N, k, C]: row i is the features of table row rows[i]
    rows: np.ndarray  # the DataBundle table rows cached: those of the train and val splits
    path: Path  # the store
    computed: int  # entries this call computed; the others were reused

    def dataset(self, data: DataBundle, split: str) -> FeatureDataset:
        """The features, labels and FileIDs of `split`, in the order of data.dataset(split)."""
        wanted = np.flatnonzero(data.table["split"].to_numpy() == split)
        at = np.flatnonzero(np.isin(self.rows, wanted))
        if len(at) != len(wanted):
            raise ValueError(f"the feature cache of {self.path} holds {len(at)} of the {len(wanted)} {split} images")
        return FeatureDataset(self.features, at, data.labels(split),
                              data.table["FileID"].to_numpy()[self.rows[at]].tolist())


class FeatureDataset(Dataset):
    """Items are (features FloatTensor[k, C], labels LongTensor[6], FileID), read from the cache per batch."""

    def __init__(self, features: ShardedImages, rows: np.ndarray, labels: np.ndarray, file_ids: list[str]) -> None:
        self.features, self.rows = features, rows
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.file_ids = file_ids

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return torch.from_numpy(self.features[int(self.rows[item])]), self.labels[item], self.file_ids[item]

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        return (torch.from_numpy(self.features[self.rows[items]]), self.labels[items],
                [self.file_ids[i] for i in items])


def _entry_keys(data: DataBundle, rows: np.ndarray) -> np.ndarray:
    """Each row's image entry key, combined with a digest of its zone map when the model reads masks."""
    keys = entry_keys(data.table["path"].to_numpy()[rows].tolist())
    if data.zones is None:
        return keys
    cache_rows = data.table["cache_index"].to_numpy()[rows]
    return np.array([hashlib.sha256(key + data.zones[int(r)].tobytes()).hexdigest()[:32]
                     for key, r in zip(keys, cache_rows)], dtype=KEY_DTYPE)


def _compute(model: CSIModel, inputs: CSIDataset, prepare: BatchPreparer, device: torch.device, batch_size: int):
    """produce(rows) for write_shards: the pooled features of those rows of `inputs`, one entry at a time."""
    def produce(rows: np.ndarray) -> Iterator[Decoded]:
        for start in range(0, len(rows), batch_size):
            stored, labels, _ = inputs.__getitems__(rows[start:start + batch_size].tolist())
            images, _ = prepare(stored, labels, device)
            with torch.no_grad():
                pooled = model.pooled_features(images).float().cpu().numpy()
            for entry in pooled:
                yield entry, entry.shape, ""  # the manifest's shape: [k, C], as every entry of the store
    return produce


def build_feature_cache(model: CSIModel, cfg: Config, data: DataBundle, device: torch.device,
                        says: bool = True) -> FeatureCache:
    """The pooled features of every train and val image of `data` under `model`'s backbone, computing only
    those the store lacks (with a progress bar); `cfg`: resolved; `says`: this process logs what it did
    (rank 0's does)."""
    settings = feature_settings(model, cfg)
    store = store_dir(Path(cfg.data.cache_dir) / FEATURES_DIR, settings)
    store.mkdir(parents=True, exist_ok=True)
    remove_abandoned(store)
    rows = np.flatnonzero(data.table["split"].isin(TRAINED_SPLITS).to_numpy())
    keys = _entry_keys(data, rows)
    plan = plan_shards(keys, read_index(store), settings)
    computed = 0
    if plan:
        inputs = CSIDataset(data.cache.images, data.table["cache_index"].to_numpy()[rows], data.labels()[rows],
                            data.table["FileID"].to_numpy()[rows].tolist(), data.zones)
        was_training = model.training
        model.eval()
        try:
            with tqdm(total=sum(len(s.rows) for s in plan), desc="Computing the frozen backbone's features",
                      unit="img", leave=False, disable=not says) as bar:
                computed = write_shards(store, plan, keys, settings,
                                        _compute(model, inputs, BatchPreparer(Normalization.of(cfg.data)), device,
                                                 cfg.evaluation.batch_size), bar)
        finally:
            model.train(was_training)
    index = read_index(store)
    entries = check_readable(store, index, keys)
    features = ShardedImages(store, index.names, index.shards[entries], index.slots[entries], settings)
    if says:
        logger.info(f"Feature cache {store}: {computed} image(s) computed now, {len(rows) - computed} reused "
                    f"({len(rows)} x {settings.vectors}x{settings.channels} {settings.dtype}, "
                    f"{features.nbytes / 2**20:.1f} MiB)")
    return FeatureCache(features, rows, store, computed)


def prebuild_feature_cache(cfg: Config, data: DataBundle) -> FeatureCache:
    """The feature cache a training run of `cfg` on `data` reads, built as that run builds it (the same
    seeded weights, normalisation and device): --mode check prepares it, and reports what it reused."""
    seed_everything(cfg.training.seed)
    cfg = resolve_preprocessing(cfg)
    device = resolve_device(cfg.training.device)
    return build_feature_cache(build_model(cfg).to(device), cfg, data, device)
