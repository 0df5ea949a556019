"""The dataset layer: (image, class id) pairs from Fashion-MNIST, idx folders, image trees or npz.

    ds = load_dataset(DataConfig(source="folder", path="imagenet", resolution=256, channels=3))
    x, y = ds[0]            # float32 (C, H, W) in [-1, 1], int
    ds.labels               # (N,) int64 without decoding images
    ds.views(0, "tencrop")  # uint8 HWC views for code extraction

Every source yields square `resolution` images with `channels` channels (1: grey, 3: RGB).
Images of another size go through ADM's centre-crop preprocessing (`center_crop_arr`), except
that idx images slightly smaller than the resolution (Fashion-MNIST 28 -> 32) are zero-padded.
Class ids are decided over all of a data set's splits and checked (classes.py); docs/DATA.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import check_fields, option
from ..errors import CtfgenError
from .classes import CLASSES_FILE, check_classes, class_counts, dataset_class_table, describe_classes, natural_key

if TYPE_CHECKING:
    from .dataset import ArrayImageDataset, ImageDataset

SOURCES = ("fashion-mnist", "idx", "folder", "npz")
# views encoded per image (preprocess.py: make_views)
VIEW_MODES = ("none", "flip", "tencrop")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Lets a machine keep Fashion-MNIST elsewhere without every config naming the path.
FASHION_MNIST_ENV = "CTFGEN_FASHION_MNIST"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Fashion-MNIST and MNIST draw on a black (0) background, so padding with 0 adds no edge.
IDX_BACKGROUND = 0
# The size Fashion-MNIST-like idx images are served at by default (the fmnist tokenizer's).
IDX_PAD_TO = 32
# idx images smaller than the resolution by at most this fraction are padded, not resampled,
# so Fashion-MNIST 28x28 reaches 32x32 with its pixels untouched.
PAD_FRACTION = 0.25
# Transparent pixels of image files are composited onto this colour (data/modes.py): white is what
# image viewers and browsers show, and what icons and clip-art with alpha are drawn to sit on.
NAMED_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def parse_background(text: str) -> tuple[int, int, int]:
    """'white', 'black' or 'R,G,B' (each 0..255) -> an RGB triple; CtfgenError otherwise."""
    if not isinstance(text, str):
        raise CtfgenError(f"data.background: expected white, black or R,G,B, got {text!r}")
    named = NAMED_BACKGROUNDS.get(text.strip().lower())
    if named:
        return named
    parts = text.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    raise CtfgenError(f"data.background: expected white, black or R,G,B with each 0..255, got {text!r}")


@dataclass
class DataConfig:
    """Which images, and how they are served (docs/DATA.md); every field is a data flag of the commands
    (apps/cli/_util.py add_data_args)."""

    source: str = option("fashion-mnist", "data source", choices=SOURCES, flag="--data")
    # None -> the source's default (only fashion-mnist has one)
    path: str | None = option(None, "folder or file of the data", flag="--data-path")
    resolution: int = option(32, "image size; other sizes are centre-cropped and resized", min=1)
    channels: int = option(1, "1 grey, 3 RGB; images are converted", choices=(1, 3))
    # decodes all images at load
    skip_bad: bool = option(False, "folder data: leave out unreadable images (counted and listed in classes.json) "
                                   "instead of failing")
    allow_empty_classes: bool = option(False, "keep class ids without images in a split (gaps in the labels, empty "
                                              "class folders) instead of refusing them")
    background: str = option("white", "folder data: colour that transparent pixels (RGBA, LA, palette transparency) "
                                      "are composited onto; recorded in the manifests", metavar="white|black|R,G,B")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise CtfgenError(f"data.source: unknown source {self.source!r}; expected one of {list(SOURCES)}")
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int):
            raise CtfgenError(f"data.resolution: expected a positive integer, got {self.resolution!r}")
        if isinstance(self.channels, bool):
            raise CtfgenError(f"data.channels: expected 1 (grey) or 3 (RGB), got {self.channels!r}")
        check_fields(self, where="data")
        if self.path is None and self.source != "fashion-mnist":
            raise CtfgenError(f"data.path: source {self.source!r} needs a path (only fashion-mnist has a default)")
        parse_background(self.background)

    def resolved_path(self) -> str:
        if self.path is not None:
            return os.path.expanduser(self.path)
        return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR


def load_dataset(cfg: DataConfig, split: str = "train") -> ImageDataset:
    """The dataset `cfg` describes, for `split` ("train"/"test" for idx sources; a folder or
    `<split>.npz` name for folder and npz sources, which fall back to their only data)."""
    path = cfg.resolved_path()
    if cfg.source in ("fashion-mnist", "idx"):
        ds = _load_idx(cfg, path, split)
    elif cfg.source == "npz":
        ds = _load_npz(cfg, path, split)
    else:
        from .folder import FolderImageDataset

        ds = FolderImageDataset(path, split, resolution=cfg.resolution, channels=cfg.channels,
                                skip_bad=cfg.skip_bad, allow_empty_classes=cfg.allow_empty_classes,
                                background=parse_background(cfg.background))
    check_classes(ds, allow_empty=cfg.allow_empty_classes)
    return ds


def stored_format(cfg: DataConfig, split: str = "train") -> tuple[int, int | None, str]:
    """(channels, resolution, what they were read from) of the data's images as stored, ignoring
    cfg.channels and cfg.resolution: the format for a consumer that has none of its own (the domain
    classifier). idx: grey, and Fashion-MNIST-sized images (a quarter smaller than 32 at most) count
    as 32, the size they are padded to; npz: the array's channels and short side; folders: see
    folder.stored_format. resolution is None when the images' short sides differ."""
    path = cfg.resolved_path()
    if cfg.source == "folder":
        from .folder import stored_format as folder_format

        return folder_format(path, split)
    if cfg.source == "npz":
        from . import npz as _npz

        file = _npz.split_file(path, split)
        images = _npz.read_npz(file).images
        channels = images.shape[3] if images.ndim == 4 else 1
        return channels, min(images.shape[1:3]), f"{file}: images {'x'.join(map(str, images.shape[1:]))}"
    ds = _load_idx(cfg, path, split)
    side = min(ds.images.shape[1:3])
    padded = IDX_PAD_TO * (1 - PAD_FRACTION) <= side <= IDX_PAD_TO
    return 1, IDX_PAD_TO if padded else side, (f"{path}: grey {side}x{side} idx images"
                                               + (f", padded to {IDX_PAD_TO}" if padded else ""))


def _load_idx(cfg: DataConfig, path: str, split: str) -> ArrayImageDataset:
    from . import idx as _idx
    from .dataset import ArrayImageDataset

    if cfg.source == "fashion-mnist" and not Path(path).is_dir():
        raise CtfgenError(
            f"Fashion-MNIST not found at {path}; set data.path (or ${FASHION_MNIST_ENV}) to a folder "
            "holding train-images-idx3-ubyte.gz and the other idx files"
        )
    images, labels, content = _idx.load_split(path, split)
    if not len(labels):
        raise CtfgenError(f"{path}: the {split} split holds no images")
    if cfg.source == "fashion-mnist":
        names = FASHION_MNIST_CLASSES
    else:
        top = max(_idx.max_label(path), int(labels.max()) if len(labels) else -1)
        names = [str(c) for c in range(top + 1)]
    return ArrayImageDataset(
        images=images,
        labels=labels,
        class_names=names,
        source=cfg.source,
        path=path,
        split=split,
        content_hash=content,
        resolution=cfg.resolution,
        channels=cfg.channels,
        pad_small=True,
        pad_value=IDX_BACKGROUND,
    )


def _load_npz(cfg: DataConfig, path: str, split: str) -> ArrayImageDataset:
    from . import npz as _npz
    from .dataset import ArrayImageDataset

    file = _npz.split_file(path, split)
    data = _npz.read_npz(file)
    if not len(data.labels):
        raise CtfgenError(f"{file}: holds no images")
    names = data.class_names
    if names is None:
        top = int(data.labels.max())
        if Path(path).is_dir():
            top = max(top, _npz.max_label_in_folder(Path(path)))
        names = [str(c) for c in range(top + 1)]
    return ArrayImageDataset(
        images=data.images,
        labels=data.labels,
        class_names=names,
        source="npz",
        path=path,
        split=split,
        content_hash=data.sha256,
        resolution=cfg.resolution,
        channels=cfg.channels,
    )


# Imported on first use (PEP 562): `DataConfig` must not pull in numpy, PIL and torch, so that the
# command line answers --help and bad options at once.
_LAZY = {
    "ArrayImageDataset": "dataset", "ImageDataset": "dataset", "data_fingerprint": "dataset",
    "FolderImageDataset": "folder", "center_crop_arr": "preprocess",
    "convert_channels": "preprocess", "make_views": "preprocess", "pad_to": "preprocess", "to_tensor": "preprocess",
}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArrayImageDataset", "CLASSES_FILE", "DataConfig", "FolderImageDataset", "ImageDataset", "FASHION_MNIST_CLASSES",
    "SOURCES", "VIEW_MODES", "center_crop_arr", "check_classes", "class_counts", "convert_channels",
    "data_fingerprint", "dataset_class_table", "describe_classes", "load_dataset", "make_views", "natural_key",
    "pad_to", "parse_background", "stored_format", "to_tensor",
]  # fmt: skip
