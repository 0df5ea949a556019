"""Reference images and their cached feature statistics.

A reference is a set of real images with a fingerprint: a dataset split (via `ctfgen.data`) or an
`.npz`. Its features under a given network are computed once and cached in
`<cache>/<reference fingerprint>-<network hash>.npz` (default cache ~/.cache/ctfgen/ref), so the
key changes whenever either the images or the network do.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..artifacts import atomic_write_bytes
from ..errors import CtfgenError
from .inputs import as_uint8_nhwc

DEFAULT_CACHE = Path("~/.cache/ctfgen/ref")
CACHE_ENV = "CTFGEN_REF_CACHE"


@dataclass
class Reference:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray | None
    fingerprint: str
    description: dict

    def __len__(self) -> int:
        return len(self.images)


def _subset(n: int, max_images: int | None, seed: int = 0) -> np.ndarray | None:
    """A fixed random subset (sorted) when the reference is larger than `max_images`."""
    if not max_images or n <= max_images:
        return None
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_images])


def _subset_fingerprint(base: str, keep: np.ndarray | None) -> str:
    if keep is None:
        return base
    return hashlib.sha256(base.encode() + b"|" + keep.astype(np.int64).tobytes()).hexdigest()[:16]


def reference_from_dataset(data_cfg, split: str, *, max_images: int | None = None) -> Reference:
    """The images `ctfgen.data.load_dataset(data_cfg, split)` serves (a random subset of
    `max_images` of them if the split is larger; the subset is part of the fingerprint)."""
    from ..data import load_dataset

    ds = load_dataset(data_cfg, split)
    keep = _subset(len(ds), max_images)
    index = np.arange(len(ds)) if keep is None else keep
    images = ds.uint8_images(index)
    desc = {**ds.describe(), "used": int(len(index)), "subset_seed": 0 if keep is not None else None}
    return Reference(as_uint8_nhwc(images, f"{data_cfg.source}:{split}"), ds.labels[index], _subset_fingerprint(ds.fingerprint, keep), desc)


def reference_from_npz(path: str | os.PathLike, *, max_images: int | None = None) -> Reference:
    path = Path(path).expanduser()
    from .inputs import load_npz_samples

    s = load_npz_samples(path)
    h = hashlib.sha256()
    h.update(f"{s.images.shape}".encode())
    h.update(s.images.tobytes())
    base = h.hexdigest()[:16]
    keep = _subset(len(s.images), max_images)
    images = s.images if keep is None else s.images[keep]
    labels = s.labels if keep is None or s.labels is None else s.labels[keep]
    desc = {"source": "npz", "path": str(path), "n": int(len(s.images)), "used": int(len(images)), "fingerprint": base}
    return Reference(images, labels, _subset_fingerprint(base, keep), desc)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cached_arrays(
    cache: Path | None, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """Arrays stored under `key` in `cache`, computed and stored if absent; (arrays, was_cached).

    `cache=None` disables caching. A damaged cache file is recomputed, not trusted.
    """
    if cache is None:
        return compute(), False
    path = cache / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}, True
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            pass
    arrays = compute()
    try:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise CtfgenError(f"cannot write reference cache {path}: {e} (choose another folder with --cache)") from None
    return arrays, False
