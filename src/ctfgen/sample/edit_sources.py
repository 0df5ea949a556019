"""The images an edit starts from (sample/editing.py): generated samples (their codes and CTF's coarse
labels), samples saved by `ctfgen sample --npz`, or image files and arrays encoded by the pipeline's
tokenizer, each checked before anything is encoded (size, channels, alpha, class, index)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import CtfgenError
from .pipeline import Samples


@dataclass
class EditSource:
    """The images an edit starts from."""

    codes: np.ndarray  # int64 (N, L) codebook indices, raster order
    labels: np.ndarray  # int64 (N,) the class each image is edited under
    coarse: np.ndarray | None = None  # int64 (N, L) CTF coarse labels, when a CTF sample brought them
    images: np.ndarray | None = None  # uint8 (N, H, W, C) the images as given (None: decode the codes)
    origin: str = ""  # where they came from, for the record



def read_png(path: str | Path, *, resolution: int, channels: int) -> np.ndarray:
    """uint8 (H, W, C) pixels of an image file, or CtfgenError when it is not the tokenizer's size
    (`resolution` square), has another channel count than `channels` (1 grey, 3 RGB), or has an
    alpha channel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            if mode == "P" and not has_alpha:
                im = im.convert("RGB")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise CtfgenError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CtfgenError(f"{path}: not a readable image ({e})") from None
    return check_image(arr, resolution=resolution, channels=channels, name=str(path), mode=mode, size=size,
                       alpha=has_alpha)


def check_image(arr: np.ndarray, *, resolution: int, channels: int, name: str = "image", mode: str = "",
                size: tuple[int, int] | None = None, alpha: bool = False) -> np.ndarray:
    """uint8 (H, W, C) from an (H, W) or (H, W, C) array, or CtfgenError naming what is wrong."""
    arr = np.asarray(arr)
    kind = f" ({mode})" if mode else ""
    if alpha or (arr.ndim == 3 and arr.shape[-1] in (2, 4)):
        raise CtfgenError(f"{name}: has an alpha channel{kind}; edits take opaque images with {channels} "
                          f"channel{'s' if channels > 1 else ''} (save it without transparency)")
    if arr.dtype != np.uint8:
        raise CtfgenError(f"{name}: pixels must be 8-bit (uint8), got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise CtfgenError(f"{name}: expected an image (H, W) or (H, W, C), got an array of shape {arr.shape}")
    h, w = arr.shape[:2]
    if (h, w) != (resolution, resolution):
        raise CtfgenError(f"{name}: {w}x{h} pixels, but the pipeline's tokenizer takes {resolution}x{resolution}")
    if arr.shape[-1] != channels:
        want = "1 (grey)" if channels == 1 else f"{channels} (RGB)"
        raise CtfgenError(f"{name}: {arr.shape[-1]} channel{'s' if arr.shape[-1] > 1 else ''}{kind}, but the "
                          f"pipeline's tokenizer takes {want}")
    return np.ascontiguousarray(arr)


@torch.inference_mode()
def encode_images(pipe, images_NHWC: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """int64 (N, L) codes of uint8 images (N, H, W, C) of the tokenizer's size (`check_image`)."""
    from ..data.preprocess import to_tensor

    if pipe.tokenizer is None:
        raise CtfgenError("this pipeline has no tokenizer: it cannot encode images")
    device = next(pipe.tokenizer.parameters()).device
    out = [pipe.tokenizer.encode_codes(to_tensor(images_NHWC[i:i + batch_size]).to(device)).flatten(1).cpu()
           for i in range(0, len(images_NHWC), batch_size)]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, pipe.seq_len), np.int64)


def images_source(pipe, images, labels: Sequence[int] | int, *, names: Sequence[str] | None = None) -> EditSource:
    """An EditSource of the user's images (uint8 (N, H, W, C), one (H, W[, C]) image, or PIL images),
    encoded by the pipeline's tokenizer; `labels`: the class of each (an int: all the same)."""
    cfg = _tokenizer_config(pipe)
    if not isinstance(images, (list, tuple)) and getattr(images, "ndim", 0) == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    names = list(names or [f"image {i}" for i in range(len(images))])
    arrs = []
    for im, name in zip(images, names):
        mode = getattr(im, "mode", "")
        alpha = mode in ("RGBA", "LA", "PA") or "transparency" in getattr(im, "info", {})
        arrs.append(check_image(np.asarray(im), resolution=cfg.resolution, channels=cfg.channels, name=name,
                                mode=mode, alpha=alpha))
    images_NHWC = np.stack(arrs) if arrs else np.zeros((0, cfg.resolution, cfg.resolution, cfg.channels), np.uint8)
    labels_N = _labels(pipe, labels, len(images_NHWC))
    return EditSource(codes=encode_images(pipe, images_NHWC), labels=labels_N, images=images_NHWC,
                      origin=", ".join(names))


def png_source(pipe, paths: Sequence[str | Path], labels: Sequence[int] | int) -> EditSource:
    """An EditSource of PNG (or other image) files, checked by `read_png` before anything is encoded."""
    cfg = _tokenizer_config(pipe)
    images = [read_png(p, resolution=cfg.resolution, channels=cfg.channels) for p in paths]
    return images_source(pipe, images, labels, names=[str(p) for p in paths])


def samples_source(samples: Samples, indices: Sequence[int] | None = None) -> EditSource:
    """Samples of `Pipeline.generate` (all, or those at `indices`) as an EditSource."""
    idx = np.arange(len(samples.labels)) if indices is None else _indices(indices, len(samples.labels), "samples")
    return EditSource(codes=np.asarray(samples.codes, np.int64)[idx], labels=np.asarray(samples.labels, np.int64)[idx],
                      coarse=None if samples.coarse is None else np.asarray(samples.coarse, np.int64)[idx],
                      images=np.asarray(samples.images)[idx], origin="samples")


def npz_source(path: str | Path, indices: Sequence[int], *, tokenizer: str | None = None) -> EditSource:
    """Samples saved by `ctfgen sample --npz` (their codes, labels and, for CTF, coarse labels).

    `tokenizer`: the fingerprint of the editing pipeline's tokenizer; a file recording another one is
    refused (its codes would decode to other images). Raises CtfgenError naming the file and the key
    or index that is missing."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CtfgenError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CtfgenError(f"{path}: not a readable .npz ({e})") from None
    with data:
        if "codes" not in data.files or "labels" not in data.files:
            raise CtfgenError(f"{path}: no 'codes' and 'labels' arrays (found {data.files}); edit sources are "
                              "samples saved by `ctfgen sample --npz` (or give --image PNG)")
        recorded = str(data["tokenizer"]) if "tokenizer" in data.files else None
        if tokenizer and recorded and recorded != tokenizer:
            raise CtfgenError(f"{path}: its codes come from tokenizer {recorded}, but the pipeline's tokenizer is "
                              f"{tokenizer}; edit them with the pipeline that made them")
        n = len(data["labels"])
        idx = _indices(indices, n, str(path))
        images = data["arr_0"][idx] if "arr_0" in data.files else None
        return EditSource(codes=data["codes"][idx].astype(np.int64), labels=data["labels"][idx].astype(np.int64),
                          coarse=data["coarse"][idx].astype(np.int64) if "coarse" in data.files else None,
                          images=images, origin=f"{path} {list(map(int, idx))}")


def as_source(pipe, source, labels: Sequence[int] | int | None = None) -> EditSource:
    """An EditSource from what a caller hands an edit method: an EditSource, `Samples`, codes (an int
    array (N, L), with `labels`), images (uint8 arrays or PIL images, with `labels`) or image paths.
    `labels` given with a source that has its own replaces them (the edit runs under that class)."""
    if isinstance(source, EditSource):
        src = source
    elif isinstance(source, Samples):
        src = samples_source(source)
    elif isinstance(source, (str, Path)) or (isinstance(source, (list, tuple)) and source
                                             and all(isinstance(s, (str, Path)) for s in source)):
        paths = [source] if isinstance(source, (str, Path)) else list(source)
        return png_source(pipe, paths, _need_labels(labels))
    elif isinstance(source, (np.ndarray, torch.Tensor)) and source.dtype not in (np.uint8, torch.uint8):
        codes = torch.as_tensor(source).long().cpu().numpy()
        if codes.ndim == 1:
            codes = codes[None]
        src = EditSource(codes=codes, labels=_labels(pipe, _need_labels(labels), len(codes)), origin="codes")
    else:
        return images_source(pipe, source, _need_labels(labels))
    if labels is not None:
        src = EditSource(codes=src.codes, labels=_labels(pipe, labels, len(src.codes)), coarse=src.coarse,
                         images=src.images, origin=src.origin)
    return src


def _need_labels(labels):
    if labels is None:
        raise CtfgenError("labels: images and codes carry no class; give labels= (the class to edit them under)")
    return labels


def _tokenizer_config(pipe):
    if pipe.tokenizer is None:
        raise CtfgenError("this pipeline has no tokenizer: it cannot read images")
    return pipe.tokenizer.config


def _labels(pipe, labels, n: int) -> np.ndarray:
    labels = [labels] * n if isinstance(labels, (int, np.integer)) else list(labels)
    if len(labels) != n:
        raise CtfgenError(f"labels: {len(labels)} given for {n} image{'s' if n != 1 else ''}")
    return pipe.check_labels(labels).numpy()


def _indices(indices, n: int, where: str) -> np.ndarray:
    idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise CtfgenError(f"index {int(bad[0])}: {where} holds {n} sample{'s' if n != 1 else ''} (0..{n - 1})")
    return idx
