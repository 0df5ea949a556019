"""Where samples go: a PNG grid (a row per class), a folder of PNGs with labels.json and a manifest,
an ADM-format .npz (arr_0: uint8 N x H x W x 3, labels) for the standard evaluator, or a grid of
coarse-to-fine triplets (coarse-label map, coarse image, final image) of CTF samples."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import artifact_dir, atomic_write_bytes, atomic_write_json, fingerprint_tensors, write_manifest
from ..config import to_dict
from .pipeline import Samples


def png_bytes(image_HWC: np.ndarray) -> bytes:
    """PNG bytes of one uint8 (H, W, C) image (grey when C is 1)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_HWC[..., 0] if image_HWC.shape[-1] == 1 else image_HWC).save(buf, format="PNG")
    return buf.getvalue()


def grid_image(images_NHWC: np.ndarray, labels_N: np.ndarray, *, pad: int = 2, scale: int = 1) -> np.ndarray:
    """One row per class (in order of first appearance), its samples left to right."""
    classes = list(dict.fromkeys(labels_N.tolist()))
    rows = [images_NHWC[labels_N == c] for c in classes]
    N, H, W, C = images_NHWC.shape
    cols = max((len(r) for r in rows), default=0)
    grid = np.full((len(rows) * (H + pad) + pad, cols * (W + pad) + pad, C), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            grid[y:y + H, x:x + W] = im
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_grid(path: str | Path, samples: Samples, *, scale: int = 1) -> Path:
    atomic_write_bytes(path, png_bytes(grid_image(samples.images, samples.labels, scale=scale)))
    return Path(path)


def triplet_images(views, *, gap: int = 1) -> np.ndarray:
    """(N, H, 3W + 2 gap, 3) uint8: each sample's coarse-label map, coarse image and final image side
    by side (`views`: a `coarse_view.CoarseViews`), white between them."""
    parts = (views.label_maps, views.coarse_images, views.final_images)
    N, H = parts[0].shape[:2]
    white = np.full((N, H, gap, 3), 255, np.uint8)
    return np.concatenate([parts[0], white, parts[1], white, parts[2]], axis=2)


def save_coarse_grid(path: str | Path, views, labels_N: np.ndarray, *, scale: int = 1) -> Path:
    """A PNG of coarse-to-fine triplets, a row per class (as `save_grid`), wider gaps between triplets."""
    grid = grid_image(triplet_images(views), np.asarray(labels_N), pad=6, scale=scale)
    atomic_write_bytes(path, png_bytes(grid))
    return Path(path)


def save_npz(path: str | Path, samples: Samples, *, tokenizer: str | None = None) -> Path:
    """ADM's layout: arr_0 uint8 (N, H, W, 3), grey images replicated to three channels, and labels;
    besides them what makes a sample an edit source (sample/editing.py): codes (N, L), seeds, the
    CTF coarse labels (N, L) when there are any, and the fingerprint of the `tokenizer` that decodes
    the codes."""
    images = samples.images
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    extra = {"codes": np.asarray(samples.codes, np.int64), "seeds": np.asarray(samples.seeds, np.uint64)}
    if samples.coarse is not None:
        extra["coarse"] = np.asarray(samples.coarse, np.int64)
    if tokenizer:
        extra["tokenizer"] = np.array(tokenizer)
    buf = io.BytesIO()
    np.savez(buf, arr_0=np.ascontiguousarray(images, dtype=np.uint8), labels=samples.labels.astype(np.int64),
             **extra)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_folder(out: str | Path, samples: Samples, *, seed: int, models: dict[str, str],
                extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """PNGs 000000.png.. plus labels.json (file, class, seed of every sample, all settings, the model
    fingerprints) and a manifest (kind "samples")."""
    settings = to_dict(samples.settings)
    record = {
        "seed": seed,
        "settings": settings,
        "models": models,
        **(extra or {}),
        "samples": [{"file": f"{i:06d}.png", "label": int(c), "seed": int(s)}
                    for i, (c, s) in enumerate(zip(samples.labels, samples.seeds))],
    }
    with artifact_dir(out, overwrite=overwrite) as tmp:
        for i, im in enumerate(samples.images):
            (tmp / f"{i:06d}.png").write_bytes(png_bytes(im))
        atomic_write_json(tmp / "labels.json", record)
        fp = fingerprint_tensors({"codes": samples.codes, "labels": samples.labels})
        write_manifest(tmp, kind="samples", fingerprint=fp, config={"seed": seed, "sampling": settings, **(extra or {})},
                       made_from=models, info={"count": len(samples.labels)})
    return Path(out)
