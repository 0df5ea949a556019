"""`.npz` files of uint8 images and integer labels.

Keys: `images` (or `arr_0`) N x H x W [x C] uint8 with C in {1, 3}; `labels` (or `arr_1`) N
integers; optionally `class_names`, N_classes strings. `path` is either such a file (used for any
split) or a folder holding `<split>.npz`.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import file_sha256
from ..errors import CtfgenError

IMAGE_KEYS = ("images", "arr_0")
LABEL_KEYS = ("labels", "arr_1")


@dataclass(frozen=True)
class NpzData:
    images: np.ndarray
    labels: np.ndarray  # int64
    class_names: list[str] | None
    sha256: str


_CACHE: dict[tuple[str, int, int], NpzData] = {}


def split_file(path: str | os.PathLike, split: str) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        f = path / f"{split}.npz"
        if not f.is_file():
            have = sorted(p.name for p in path.glob("*.npz"))
            raise CtfgenError(f"{path}: no {split}.npz for split '{split}' (found: {have or 'no .npz files'})")
        return f
    raise CtfgenError(f"npz data not found: {path}")


def _pick(npz, keys: tuple[str, ...], path: Path, what: str) -> np.ndarray:
    for k in keys:
        if k in npz.files:
            return npz[k]
    raise CtfgenError(f"{path}: missing {what} array; expected key {' or '.join(map(repr, keys))}, found {npz.files}")


def read_npz(path: str | os.PathLike) -> NpzData:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = _pick(npz, IMAGE_KEYS, path, "images")
            labels = _pick(npz, LABEL_KEYS, path, "labels")
            names = npz["class_names"] if "class_names" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CtfgenError(f"{path}: cannot read .npz file ({e})") from None

    if images.dtype != np.uint8:
        raise CtfgenError(f"{path}: images must be uint8, got dtype {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise CtfgenError(
            f"{path}: images must be N x H x W or N x H x W x C with C in (1, 3), got shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CtfgenError(f"{path}: labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}")
    if len(labels) != len(images):
        raise CtfgenError(f"{path}: {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.min() < 0:
        raise CtfgenError(f"{path}: labels must be >= 0, found {labels.min()}")
    class_names = None
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise CtfgenError(f"{path}: class_names must be a 1-D array of strings, got dtype {names.dtype}")
        class_names = [str(n) for n in names]
    data = NpzData(images, labels.astype(np.int64), class_names, file_sha256(path))
    _CACHE[key] = data
    return data


def max_label_in_folder(folder: Path) -> int:
    """Largest label over all `*.npz` splits in a folder, so splits agree on the class count."""
    best = -1
    for f in sorted(folder.glob("*.npz")):
        try:
            with np.load(f, allow_pickle=False) as npz:
                labels = next((npz[k] for k in LABEL_KEYS if k in npz.files), None)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            continue  # a broken other split is reported when that split is loaded
        if labels is not None and labels.ndim == 1 and labels.dtype.kind in "iu" and len(labels):
            best = max(best, int(labels.max()))
    return best
