"""Image preprocessing shared by every source: ADM centre crop, padding, channels, views, tensors.

All functions work on uint8 arrays shaped (H, W, C) with C in {1, 3}; PIL images are accepted
where noted. Keeping one array layout everywhere lets the dataset classes stay simple.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

from ..errors import CtfgenError
from . import VIEW_MODES
from .modes import WHITE, to_8bit

ImageLike = Union[np.ndarray, Image.Image]


def to_pil(img: ImageLike) -> Image.Image:
    """A PIL image ("L" or "RGB") from a uint8 HWC / HW array; PIL images pass through."""
    if isinstance(img, Image.Image):
        return img
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise CtfgenError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr, mode="RGB")
    raise CtfgenError(f"expected an image array shaped (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")


def to_hwc(img: ImageLike) -> np.ndarray:
    """A uint8 (H, W, C) array from a PIL image or an (H, W) / (H, W, C) array."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def convert_channels(img: ImageLike, channels: int) -> np.ndarray:
    """uint8 HWC with `channels` channels: grey is repeated to RGB, RGB becomes luma (PIL's "L")."""
    if isinstance(img, Image.Image):
        return to_hwc(to_8bit(img, channels, WHITE, "image"))  # the stated rules for alpha, 16-bit, CMYK
    arr = to_hwc(img)
    have = arr.shape[2]
    if have == channels:
        return arr
    if have == 1 and channels == 3:
        return np.repeat(arr, 3, axis=2)
    if have == 3 and channels == 1:
        return to_hwc(to_pil(arr).convert("L"))
    raise CtfgenError(f"cannot convert an image with {have} channels to {channels} channels")


def center_crop_arr(img: ImageLike, image_size: int) -> np.ndarray:
    """ADM's preprocessing (as LlamaGen uses it): square `image_size` crop, uint8 HWC.

    Halve with BOX filtering while the short side is at least twice the target (cheap and
    alias-free), then one BICUBIC resize bringing the short side to `image_size`, then cut the
    centre square. Reproducing this exactly matters: FID reference statistics assume it.
    """
    pil = to_pil(img)
    while min(pil.size) >= 2 * image_size:
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    if min(pil.size) != image_size:
        scale = image_size / min(pil.size)
        pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
    arr = to_hwc(pil)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return np.ascontiguousarray(arr[top : top + image_size, left : left + image_size])


def pad_to(arr: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Centre `arr` (HWC) on a `size` x `size` canvas filled with `value` (no resampling)."""
    h, w = arr.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    out = np.full((size, size, arr.shape[2]), value, dtype=arr.dtype)
    out[top : top + h, left : left + w] = arr
    return out


def hflip(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr[:, ::-1])


def ten_crop(arr: np.ndarray, size: int) -> list[np.ndarray]:
    """Four corner crops and the centre crop, then the same five of the mirrored image."""
    h, w = arr.shape[:2]
    if h < size or w < size:
        raise CtfgenError(f"ten-crop of size {size} needs an image at least that big, got {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    crops = [np.ascontiguousarray(arr[y : y + size, x : x + size]) for y, x in corners]
    return crops + [hflip(c) for c in crops]


def make_views(img: ImageLike, mode: str, resolution: int, crop_range: float = 1.1) -> list[np.ndarray]:
    """Augmented views of one image for code extraction, as uint8 HWC arrays of `resolution`.

    "none": the image (ADM-cropped to `resolution` if it is another size) -> 1 view.
    "flip": that image and its horizontal mirror -> 2 views.
    "tencrop": ADM-crop to int(resolution * crop_range), then ten_crop(resolution) -> 10 views.
    Channels are kept as given.
    """
    if mode not in VIEW_MODES:
        raise CtfgenError(f"unknown view mode {mode!r}; expected one of {list(VIEW_MODES)}")
    if mode == "tencrop":
        big = int(resolution * crop_range)
        if big < resolution:
            raise CtfgenError(f"crop_range must be >= 1 for ten-crop views, got {crop_range}")
        return ten_crop(center_crop_arr(img, big), resolution)
    arr = to_hwc(img)
    if arr.shape[:2] != (resolution, resolution):
        arr = center_crop_arr(img, resolution)
    arr = np.ascontiguousarray(arr)
    return [arr] if mode == "none" else [arr, hflip(arr)]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC (or NHWC) -> float32 CHW (or NCHW) in [-1, 1], as x / 127.5 - 1."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise CtfgenError(f"to_tensor expects uint8 pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim not in (3, 4):
        raise CtfgenError(f"to_tensor expects HWC or NHWC, got shape {arr.shape}")
    # numpy is quicker than torch for one small image; CHW layout is made before the division.
    chw = np.moveaxis(arr, -1, -3).astype(np.float32, order="C")
    chw /= 127.5
    chw -= 1.0
    return torch.from_numpy(chw)
