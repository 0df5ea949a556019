"""MNIST-style idx files: parsing with numpy, locating a split's files, a per-process cache.

Format: two zero bytes, a type byte (0x08 = unsigned byte, the only one images use), a byte with
the number of dimensions, one big-endian uint32 per dimension, then the data in C order.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CtfgenError

# idx file name prefix per split; "val" is accepted so generic code can ask for a held-out split.
SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k", "val": "t10k"}


@dataclass(frozen=True)
class IdxArray:
    data: np.ndarray  # uint8, read-only
    sha256: str  # of the decompressed bytes, so .gz and raw copies of one file agree


# Decoded files keyed by (resolved path, size, mtime): loading a dataset twice costs nothing,
# and a file rewritten in place is read again (unless its size and mtime both stay the same).
_CACHE: dict[tuple[str, int, int], IdxArray] = {}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError.
        raise CtfgenError(f"{path}: cannot read idx file ({e})") from None


def parse_idx(raw: bytes, where: str = "idx data", ndim: int | None = None) -> np.ndarray:
    """The uint8 array stored in idx bytes; errors name `where` and what is wrong."""
    if len(raw) < 4:
        raise CtfgenError(f"{where}: file is {len(raw)} bytes, too short for an idx header")
    if raw[0] != 0 or raw[1] != 0:
        raise CtfgenError(f"{where}: bad magic number {raw[:4].hex()} (expected 0000 08 0N); not an idx file")
    if raw[2] != 0x08:
        raise CtfgenError(f"{where}: idx data type 0x{raw[2]:02x} is not supported (expected 0x08, unsigned byte)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise CtfgenError(f"{where}: idx file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise CtfgenError(f"{where}: truncated header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise CtfgenError(f"{where}: {state}: {len(raw)} bytes, dimensions {dims} need {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> IdxArray:
    """Read (or take from the cache) one idx file, raw or gzipped."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise CtfgenError(f"{path}: cannot read idx file ({e.strerror})") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(key)
    if hit is None:
        raw = _read_bytes(path)
        hit = IdxArray(parse_idx(raw, where=str(path)), hashlib.sha256(raw).hexdigest())
        _CACHE[key] = hit
    if ndim is not None and hit.data.ndim != ndim:
        raise CtfgenError(f"{path}: idx file has {hit.data.ndim} dimensions, expected {ndim}")
    return hit


def _find(folder: Path, prefix: str, kind: str) -> Path:
    # Both the usual "train-images-idx3-ubyte" and the "train-images.idx3-ubyte" spelling exist.
    names = [f"{prefix}-{kind}", f"{prefix}-{kind}".replace("-idx", ".idx")]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):  # raw first: no inflating
            if candidate.is_file():
                return candidate
    raise CtfgenError(f"{folder}: no idx file {names[0]}[.gz] found")


def split_files(folder: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(images, labels) idx paths of `split` ("train" or "test") inside `folder`."""
    folder = Path(folder)
    if split not in SPLIT_PREFIX:
        raise CtfgenError(f"unknown split {split!r} for idx data; expected 'train' or 'test'")
    if not folder.is_dir():
        raise CtfgenError(f"idx data folder not found: {folder}")
    prefix = SPLIT_PREFIX[split]
    return _find(folder, prefix, "images-idx3-ubyte"), _find(folder, prefix, "labels-idx1-ubyte")


def load_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images N x H x W uint8, labels N int64, content hash) of one split, checked for agreement."""
    img_path, lab_path = split_files(folder, split)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if len(images.data) != len(labels.data):
        raise CtfgenError(
            f"{img_path} holds {len(images.data)} images but {lab_path} holds {len(labels.data)} labels"
        )
    content = hashlib.sha256(f"{images.sha256}|{labels.sha256}".encode()).hexdigest()
    return images.data, labels.data.astype(np.int64), content


def max_label(folder: str | os.PathLike) -> int:
    """Largest label over every split present, so train and test agree on the class count."""
    best = -1
    for split in ("train", "test"):
        try:
            _, lab_path = split_files(folder, split)
            labels = read_idx(lab_path, ndim=1).data
        except CtfgenError:
            continue  # a missing or broken other split is reported when that split is loaded
        if len(labels):
            best = max(best, int(labels.max()))
    return best
