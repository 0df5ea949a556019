"""Reading samples to evaluate: a folder of PNGs (recursive) or an ADM-style `.npz`.

Labels, when known, come from (first match wins):
  npz:    a `labels` array, else `arr_1` (ADM's class-conditional batches);
  folder: `labels.json` beside the images (the sampler's record {"samples": [{"file", "label",
          "seed"}, ...], ...}, or {"relative/path.png": label, ...}, or a list aligned with the
          sorted relative paths), else every file name carrying `class<k>`, `label<k>`,
          `c<k>` or `y<k>` as a `_`/`-`-separated part (e.g. `000123_c4.png`), else every image
          sitting in a folder named by an integer (`4/000123.png`).
Metadata (seeds, sampling settings, model fingerprints) comes from a `manifest.json` in the
folder (or beside the npz), and from `<name>.json` beside an npz.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifacts import MANIFEST
from ..data.modes import GREY_MODES, WHITE, to_8bit
from ..errors import CtfgenError
from ..progress import progress_bar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_LABEL_PART = re.compile(r"^(?:class|label|c|y)(\d+)$", re.IGNORECASE)


@dataclass
class SampleSet:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray | None  # int64 (N,) or None
    source: str
    metadata: dict = field(default_factory=dict)
    label_source: str | None = None


def as_uint8_nhwc(images: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise CtfgenError(f"{where}: expected uint8 images of shape (N, H, W, 1 or 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise CtfgenError(f"{where}: expected dtype uint8, got {arr.dtype}")
    return arr


def _read_metadata(paths: list[Path]) -> dict:
    meta = {}
    for p in paths:
        if p.is_file():
            try:
                meta[p.name] = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CtfgenError(f"{p}: not valid JSON: {e}") from None
    return meta


def load_npz_samples(path: Path, *, limit: int | None = None) -> SampleSet:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CtfgenError(f"{path}: not a readable .npz: {e}") from None
    key = next((k for k in ("arr_0", "images") if k in data.files), None)
    if key is None:
        raise CtfgenError(f"{path}: no 'arr_0' array (expected ADM format: arr_0 uint8 N x H x W x 3, or a data set "
                          f"npz with 'images'); found {data.files}")
    images = as_uint8_nhwc(data[key][:limit], f"{path}: {key}")
    labels, label_source = None, None
    for key in ("labels", "arr_1"):
        if key in data.files:
            labels, label_source = np.asarray(data[key][:limit], np.int64), f"npz:{key}"
            if labels.shape != (len(images),):
                raise CtfgenError(f"{path}: '{key}' has shape {labels.shape}, expected ({len(images)},)")
            break
    meta = _read_metadata([path.parent / MANIFEST, path.with_suffix(".json")])
    return SampleSet(images, labels, str(path), meta, label_source)


def _labels_from_names(rel: list[str]) -> np.ndarray | None:
    found = []
    for r in rel:
        parts = re.split(r"[_\-.]", Path(r).stem)
        hits = [m.group(1) for p in parts if (m := _LABEL_PART.match(p))]
        if not hits:
            break
        found.append(int(hits[-1]))
    else:
        return np.asarray(found, np.int64)
    parents = [Path(r).parent.name for r in rel]
    if all(p.isdigit() for p in parents):
        return np.asarray([int(p) for p in parents], np.int64)
    return None


def _labels_from_json(path: Path, rel: list[str], meta: dict) -> np.ndarray:
    spec = _read_metadata([path])[path.name]
    if isinstance(spec, dict) and isinstance(spec.get("samples"), list):
        # The sampler's record: run settings at the top, {"file", "label", "seed"} per sample.
        meta["labels.json"] = {k: v for k, v in spec.items() if k != "samples"}
        try:
            by_file = {e["file"]: e for e in spec["samples"]}
            entries = [by_file[r] for r in rel]
        except (KeyError, TypeError):
            raise CtfgenError(f"{path}: 'samples' must list {{file, label}} for every image") from None
        if all("seed" in e for e in entries):
            meta["sample_seeds"] = [int(e["seed"]) for e in entries]
        spec = [e["label"] for e in entries]
    if isinstance(spec, list):
        if len(spec) != len(rel):
            raise CtfgenError(f"{path}: {len(spec)} labels for {len(rel)} images")
        return np.asarray(spec, np.int64)
    if isinstance(spec, dict):
        missing = [r for r in rel if r not in spec]
        if missing:
            raise CtfgenError(f"{path}: no label for {len(missing)} image(s), e.g. {missing[0]!r}")
        return np.asarray([spec[r] for r in rel], np.int64)
    raise CtfgenError(f"{path}: expected a list of labels or an object mapping file -> label")


def load_folder_samples(folder: Path, *, limit: int | None = None, progress: bool = True) -> SampleSet:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CtfgenError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found, searched recursively")
    files = files[:limit]
    rel = [p.relative_to(folder).as_posix() for p in files]
    arrays = []
    for p in progress_bar(files, desc="reading samples", show=(progress and len(files) >= 1000), unit="img"):
        try:
            with Image.open(p) as im:
                # 16-bit grey scaled, transparency composited onto white: the data loader's rules
                arrays.append(np.asarray(to_8bit(im, 1 if im.mode in GREY_MODES else 3, WHITE, p)))
        except OSError as e:
            raise CtfgenError(f"{p}: unreadable image: {e}") from None
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        raise CtfgenError(f"{folder}: images differ in size {sorted(shapes)[:4]}; resize them to one size first")
    if any(a.ndim == 3 for a in arrays):  # mixed modes: lift the grey ones to RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    images = as_uint8_nhwc(np.stack(arrays), str(folder))
    meta = _read_metadata([folder / MANIFEST])
    label_file = folder / "labels.json"
    if label_file.is_file():
        labels, label_source = _labels_from_json(label_file, rel, meta), "labels.json"
    else:
        labels = _labels_from_names(rel)
        label_source = "file names" if labels is not None else None
    return SampleSet(images, labels, str(folder), meta, label_source)


def _find_key(obj, key: str, path: str = "") -> dict:
    """Every value under a key named `key` (at any depth), by dotted path."""
    found = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else k
            if k == key or k.endswith("_" + key):
                found[sub] = v
            found.update(_find_key(v, key, sub))
    return found


def summarize_metadata(meta: dict) -> dict:
    """The parts a result must show up front: seeds, sampling settings and model fingerprints,
    taken from an artifact-style manifest (`config`, `made_from`); the full files stay alongside."""
    manifest = meta.get(MANIFEST) or {}
    summary = {"seeds": _find_key({k: v for k, v in meta.items() if k != "sample_seeds"}, "seed")}
    if "sample_seeds" in meta:
        summary["seeds"]["per_sample"] = meta["sample_seeds"]
    if isinstance(manifest, dict):
        summary["sampling"] = manifest.get("config", {})
        summary["made_from"] = manifest.get("made_from", {})
        summary["samples_fingerprint"] = manifest.get("fingerprint")
    return summary


def load_samples(path: str | Path, *, limit: int | None = None, progress: bool = True) -> SampleSet:
    """A folder of images or an `.npz`; `limit` keeps the first N (sorted file order)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return load_folder_samples(p, limit=limit, progress=progress)
    if p.is_file() and p.suffix == ".npz":
        return load_npz_samples(p, limit=limit)
    raise CtfgenError(f"samples not found: {p} (expected a folder of PNGs or an .npz file)")
