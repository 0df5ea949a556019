"""The test suite's tiny data set, written where it is asked for: three classes of 16x16 grey blobs
(96 train, 30 test images) as npz splits. Used by conftest.py's `tiny_data` and by
fixtures/make_release_folders.py, whose fixtures the tests later compare with this same data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctfgen.data import DataConfig


def write_blobs(folder: Path) -> DataConfig:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for split, n in (("train", 96), ("test", 30)):
        labels = np.arange(n) % 3
        imgs = np.stack([(255 * np.exp(-((yy - 4 - 4 * c) ** 2 + (xx - 8) ** 2) / 8)).astype(np.uint8) for c in labels])
        imgs = np.clip(imgs + rng.integers(0, 20, imgs.shape), 0, 255).astype(np.uint8)
        np.savez(folder / f"{split}.npz", images=imgs, labels=labels)
    return DataConfig(source="npz", path=str(folder), resolution=16, channels=1)
