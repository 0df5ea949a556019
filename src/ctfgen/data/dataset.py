"""The dataset classes: one base with the shared API, one for in-memory uint8 arrays."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from ..errors import CtfgenError
from ..progress import progress_bar
from . import PAD_FRACTION
from .preprocess import center_crop_arr, convert_channels, make_views, pad_to, to_tensor



def data_fingerprint(source: str, split: str, content: str, resolution: int, channels: int) -> str:
    """16 hex digits naming the source, split, content hash and the pixel format served.

    Resolution and channels are included because they change every pixel a consumer sees: codes
    or reference statistics made at 32x32 grey must not be mistaken for 64x64 RGB ones.
    """
    blob = json.dumps(
        {"source": source, "split": split, "content": content, "resolution": resolution, "channels": channels},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ImageDataset(torch.utils.data.Dataset):
    """(image, class id) pairs: float32 CHW tensors in [-1, 1] and Python ints.

    Subclasses set the attributes below and implement `uint8_image`.
    """

    source: str
    path: str
    split: str
    labels: np.ndarray  # (N,) int64, available without decoding any image
    class_names: list[str]
    channels: int
    resolution: int
    skipped: int  # unreadable files left out (folder source with skip_bad); 0 elsewhere
    skipped_files: list[str] = []  # their paths relative to the split folder
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def _index(self, i: int) -> int:
        n = self.labels.shape[0]
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return i % n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        return to_tensor(self.uint8_image(i)), int(self.labels[i])

    def uint8_image(self, i: int) -> np.ndarray:
        """The preprocessed image i as uint8 (resolution, resolution, channels)."""
        raise NotImplementedError

    def uint8_images(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Preprocessed images `indices` (default: all) stacked as uint8 (N, H, W, C)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), self.resolution, self.resolution, self.channels), np.uint8)
        for k, i in enumerate(progress_bar(idx, desc=f"loading {self.split}", unit="img", leave=False,
                                         mininterval=1.0)):
            out[k] = self.uint8_image(int(i))
        return out

    def views(self, i: int, mode: str, crop_range: float = 1.1) -> list[np.ndarray]:
        """Augmented uint8 HWC views of image i (see `make_views`); the label is `labels[i]`."""
        return make_views(self.uint8_image(i), mode, self.resolution, crop_range)

    def transparent_count(self, n: int | None = None) -> int:
        """How many of the first `n` images (default: all) are composited onto a background: those
        with an alpha channel or a transparent colour (only image files have them; arrays: 0)."""
        return 0

    def transparency_note(self, n: int | None = None) -> tuple[int, str | None]:
        """(transparent_count(n), a line saying so and onto what, or None when there are none)."""
        count = self.transparent_count(n)
        if not count:
            return 0, None
        bg = self.describe().get("background", "")
        total = len(self) if n is None else min(n, len(self))
        return count, (f"{count} of {total} {self.split} images have transparency: composited onto the background "
                       f"{bg} (--background)")

    def describe(self) -> dict:
        return {
            "source": self.source,
            "path": self.path,
            "split": self.split,
            "n": len(self),
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "channels": self.channels,
            "fingerprint": self.fingerprint,
            **({"skipped_unreadable": self.skipped} if self.skipped else {}),
        }

    def __repr__(self) -> str:
        d = self.describe()
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in d.items())})"

    def images_range(self, start: int, stop: int) -> "ImageDataset":
        """Images start..stop-1 as a dataset of their own (e.g. a validation split held out of the
        training images), named "<split>[start:stop]" with its own fingerprint."""
        if not 0 <= start < stop <= len(self):
            raise CtfgenError(f"{self.split}: images {start}..{stop} do not lie within its {len(self)} images")
        return RangeDataset(self, start, stop)


class RangeDataset(ImageDataset):
    """A contiguous range of another dataset's images (ImageDataset.images_range)."""

    def __init__(self, base: ImageDataset, start: int, stop: int):
        self.base, self.start = base, start
        self.labels = base.labels[start:stop]
        self.class_names, self.channels, self.resolution = base.class_names, base.channels, base.resolution
        self.source, self.path, self.skipped = base.source, base.path, 0
        self.split = f"{base.split}[{start}:{stop}]"
        self.fingerprint = data_fingerprint(base.source, self.split, base.fingerprint, base.resolution, base.channels)

    def uint8_image(self, i: int) -> np.ndarray:
        return self.base.uint8_image(self.start + self._index(i))


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one uint8 array (idx and npz sources).

    Preprocessing happens per item, so a 60k-image split loads as fast as numpy can read it.
    """

    def __init__(
        self,
        *,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: list[str],
        source: str,
        path: str,
        split: str,
        content_hash: str,
        resolution: int,
        channels: int,
        pad_small: bool = False,
        pad_value: int = 0,
    ):
        if images.ndim == 3:
            images = images[:, :, :, None]
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.source, self.path, self.split = source, path, split
        self.resolution, self.channels = resolution, channels
        self.pad_small, self.pad_value = pad_small, pad_value
        self.skipped = 0
        self.fingerprint = data_fingerprint(source, split, content_hash, resolution, channels)
        from ..config import check_class_ids

        check_class_ids(self.labels, self.num_classes, where=f"{path}: labels ({split}, {self.num_classes} classes)")

    def _fits_padding(self, h: int, w: int) -> bool:
        r = self.resolution
        return self.pad_small and h <= r and w <= r and min(h, w) >= r * (1 - PAD_FRACTION)

    def uint8_images(self, indices: np.ndarray | None = None) -> np.ndarray:
        # Same-size and padded images need no per-image work: do the whole batch in numpy.
        sel = self.images if indices is None else self.images[np.asarray(indices, dtype=np.int64)]
        h, w, c = sel.shape[1:]
        r = self.resolution
        if (h, w) != (r, r) and not self._fits_padding(h, w):
            return super().uint8_images(indices)
        if c != self.channels:
            sel = np.repeat(sel, 3, axis=3) if c == 1 else _luma(sel)
        if (h, w) == (r, r):
            return np.ascontiguousarray(sel)
        out = np.full((len(sel), r, r, self.channels), self.pad_value, np.uint8)
        top, left = (r - h) // 2, (r - w) // 2
        out[:, top : top + h, left : left + w] = sel
        return out

    def uint8_image(self, i: int) -> np.ndarray:
        arr = convert_channels(self.images[self._index(i)], self.channels)
        h, w = arr.shape[:2]
        if (h, w) == (self.resolution, self.resolution):
            return np.ascontiguousarray(arr)
        if self._fits_padding(h, w):
            return pad_to(arr, self.resolution, self.pad_value)
        return center_crop_arr(arr, self.resolution)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, rounded) for a batch of NHWC images."""
    weights = np.array([19595, 38470, 7471], dtype=np.uint32)  # 0.299, 0.587, 0.114 in 1/65536
    y = (rgb.astype(np.uint32) * weights).sum(axis=-1, keepdims=True) + 0x8000
    return (y >> 16).astype(np.uint8)
