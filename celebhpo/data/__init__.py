"""CelebA data: layouts, synthetic faces, the decode-once cache and the batch loader.

`load_data(cfg.data)` is the one entry point for training: read labels, choose each split's
subset, decode (or reuse) the cached uint8 arrays, and hand back a DataBundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from celebhpo.data.cache import DecodedImages, decode_images
from celebhpo.data.images import load_image
from celebhpo.data.inspect import inspect_dataset
from celebhpo.data.layouts import ATTRIBUTES, CelebA, read_celeba, select_split
from celebhpo.data.loader import IMAGENET_MEAN, IMAGENET_STD, BatchLoader, normalize
from celebhpo.data.places import default_cache_dir, default_plot_dir, user_cache_dir
from celebhpo.data.synth import VISIBLE_ATTRIBUTES, synthesize
from celebhpo.errors import DataError, did_you_mean
from celebhpo.stopping import StopRequest

if TYPE_CHECKING:
    from celebhpo.config import DataConfig

__all__ = [
    "ATTRIBUTES", "IMAGENET_MEAN", "IMAGENET_STD", "VISIBLE_ATTRIBUTES", "BatchLoader", "CelebA",
    "DataBundle", "DecodedImages", "SplitData", "check_split_sizes", "decode_images",
    "default_cache_dir", "default_plot_dir",
    "inspect_dataset", "load_data", "load_image", "normalize", "read_celeba", "select_split",
    "synthesize", "user_cache_dir",
]


@dataclass
class SplitData:
    name: str
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped from the cache
    labels: np.ndarray  # (N, 40) float32 in {0, 1}
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DataBundle:
    attributes: list[str]
    splits: dict[str, SplitData]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason)
    root: Path = Path(".")
    layout: str = "kaggle"

    def __getitem__(self, split: str) -> SplitData:
        return self.splits[split]


def load_data(cfg: DataConfig, splits: Sequence[str] = ("train", "val"),
              progress: bool = True, stop: StopRequest | None = None) -> DataBundle:
    """Read `cfg.root`, take each split's subset and decode it once (or reuse the cache).

    Images that cannot be read are skipped and listed in `.skipped` (cfg.on_bad_image = "skip"),
    or stop the run with a DataError naming the image ("fail"). `stop`: a decode answers a
    stop request between chunks (Interrupted, see data.cache).
    """
    root = Path(cfg.root)
    ds = read_celeba(root, cfg.layout)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(root)
    out: dict[str, SplitData] = {}
    skipped: list[tuple[str, str]] = []
    for split in splits:
        rows = select_split(ds, split, cfg.split_size(split), cfg.subset, cfg.subset_seed)
        decoded = decode_images(ds.paths(rows), cfg.image_size, cfg.crop, cache_dir,
                                on_bad=cfg.on_bad_image, progress=progress, stop=stop)
        if len(decoded.kept) == 0:
            raise DataError(f"{ds.image_dir}: none of the {len(rows)} {split} images could be "
                            f"read (first: {decoded.bad[0][0]}: {decoded.bad[0][1]})")
        kept_rows = rows[decoded.kept]
        out[split] = SplitData(name=split, images=decoded.array,
                               labels=ds.labels[kept_rows].astype(np.float32),
                               ids=[ds.ids[i] for i in kept_rows])
        skipped += decoded.bad
    return DataBundle(attributes=list(ds.attributes), splits=out, skipped=skipped, root=root,
                      layout=ds.layout)


def check_split_sizes(cfg: DataConfig, attributes: Sequence[str] = (), key: str = "") -> None:
    """DataError (one line naming the file and the key) when `[data] *_size` asks for more
    images than a split has, or when one of `attributes` (named by the study's `key`, e.g.
    `[study] slices`) is not a column of the labels. Nothing when `cfg.root` is not
    reachable from here: workers on other machines may see it where this one does not."""
    if not Path(cfg.root).is_dir():
        return
    ds = read_celeba(cfg.root, cfg.layout)
    for split in ("train", "val", "test"):
        select_split(ds, split, cfg.split_size(split), cfg.subset, cfg.subset_seed)
    for name in attributes:
        if name not in ds.attributes:
            close = did_you_mean(name, ds.attributes)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{key} names {name!r}, which is not an attribute of {cfg.root}"
                            f"{hint} (attributes: {', '.join(ds.attributes)})")
