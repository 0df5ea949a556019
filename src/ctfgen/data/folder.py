"""Image-folder trees (ImageNet train layout): one sub-folder per class.

Class ids follow the class folders in natural order ("2" before "10"; equal-width names such as
ImageNet's n01440764 keep their text order, so ids match torchvision's ImageFolder there). With
split folders (root/train, root/test, ...) the classes are the union over every split folder, so
an id means the same class in every split.

Readability: by default files are only listed (names, sizes, mtimes) at index time, so a
1.28M-image tree indexes in seconds; a corrupt file raises CtfgenError naming it when it is
loaded. With `skip_bad=True` every file is decoded once at index time and unreadable ones are
left out and counted in `.skipped`, which costs a full pass over the data.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CtfgenError
from ..progress import progress_bar
from .classes import ALLOW_HINT, natural_key
from .dataset import ImageDataset, data_fingerprint
from .modes import GREY_MODES, WHITE, has_transparency, to_8bit
from .preprocess import center_crop_arr, make_views, to_hwc

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# Folder names that mean "this is a split, not a class" when the asked-for split is missing.
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(class_dir: Path) -> list[tuple[str, int, int]]:
    """(path relative to class_dir, size, mtime_ns) of every image below class_dir, sorted.

    scandir's entries carry the names, and string joins avoid os.path.relpath, which was most
    of the indexing time for ImageNet-sized trees.
    """
    found = []
    pending = [("", str(class_dir))]
    while pending:
        rel_dir, abs_dir = pending.pop()
        with os.scandir(abs_dir) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                rel = rel_dir + entry.name
                if entry.is_dir():
                    pending.append((rel + os.sep, entry.path))
                elif _is_image(entry.name):
                    st = entry.stat()
                    found.append((rel, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def open_image(path: str | os.PathLike, channels: int, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode a file as an "L" or "RGB" PIL image, converted by the rules of data/modes.py
    (transparency composited onto `background`); any decoding problem names the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-with-transparency notices
            with Image.open(path) as im:
                im.load()
                return to_8bit(im, channels, background, path)
    except _READ_ERRORS as e:
        raise CtfgenError(f"{path}: cannot read image ({e})") from None


def _transparent(path: str) -> bool:
    """Whether the file's header declares transparency (no pixels are decoded); unreadable: False."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return has_transparency(im)
    except _READ_ERRORS:
        return False


def stored_format(path: str | os.PathLike, split: str, per_class: int = 8) -> tuple[int, int | None, str]:
    """(channels, resolution, what was read) of a class-folder tree's images as stored, from the
    headers of the first `per_class` files of each class of `split`: channels 3 when any of them is
    in a colour mode (a palette counts when it holds a colour), else 1; resolution the short side they
    share, None when it differs."""
    root, _ = _data_root(Path(path), split)
    picks = [str(root / name / rel) for name in sorted(_class_dirs(root), key=natural_key)
             for rel, _, _ in _list_images(root / name)[:per_class]]
    if not picks:
        raise CtfgenError(f"{root}: no images in its class folders")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = [f for f in pool.map(_mode_and_size, picks) if f is not None]
    if not found:
        raise CtfgenError(f"{root}: none of the first {per_class} images of each class could be read")
    colour = [p for p, mode, _ in found if mode not in GREY_MODES]
    sides = {min(size) for _, _, size in found}
    channels = 3 if colour else 1
    what = (f"{len(found)} images read (the first {per_class} of each class): "
            + (f"colour, e.g. {os.path.relpath(colour[0], root)}" if colour else "all grey"))
    if len(sides) == 1:
        return channels, sides.pop(), f"{what}, short side {min(found[0][2])}"
    return channels, None, f"{what}, short sides {sorted(sides)[:4]} differ"


def _mode_and_size(path: str) -> tuple[str, str, tuple[int, int]] | None:
    """(path, mode, size) from the header; a palette image's mode is "L" when its palette is grey."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                mode = im.mode
                if mode in ("P", "PA"):
                    rgb = np.asarray(im.getpalette() or [0, 0, 0], np.int64).reshape(-1, 3)
                    mode = "L" if (rgb == rgb[:, :1]).all() else "RGB"
                return path, mode, im.size
    except _READ_ERRORS:
        return None


def _readable(path: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                # JPEG draft mode decodes at a reduced scale but still reads the whole stream,
                # so truncation is caught at a fraction of the cost of a full decode.
                im.draft(im.mode, (64, 64))
                im.load()
        return True
    except _READ_ERRORS:
        return False


def _data_root(path: Path, split: str) -> tuple[Path, list[Path]]:
    """The folder of `split` and every split folder beside it (just the root for a flat tree)."""
    if not path.is_dir():
        raise CtfgenError(f"image folder not found: {path}")
    splits = [path / s for s in SPLIT_NAMES if (path / s).is_dir()]
    if (path / split).is_dir():
        return path / split, sorted(set(splits) | {path / split})
    if splits:
        raise CtfgenError(f"{path} has split folder(s) {[p.name for p in splits]} but no '{split}' folder")
    return path, [path]


def _class_dirs(folder: Path) -> set[str]:
    return {e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")}


class FolderImageDataset(ImageDataset):
    def __init__(self, path: str | os.PathLike, split: str, *, resolution: int, channels: int, skip_bad: bool = False,
                 allow_empty_classes: bool = False, background: tuple[int, int, int] = WHITE):
        root, split_roots = _data_root(Path(path), split)
        if not _class_dirs(root):
            raise CtfgenError(f"{root}: no class sub-folders found (expected {root}/<class>/<image files>)")
        class_dirs = sorted(set().union(*(_class_dirs(r) for r in split_roots)), key=natural_key)
        self.root = root
        self.class_names = class_dirs
        self.source, self.path, self.split = "folder", str(path), split
        self.resolution, self.channels = resolution, channels
        self.background = tuple(background)

        files: list[str] = []
        labels: list[int] = []
        h = hashlib.sha256()
        h.update(("\0".join(class_dirs) + "\n").encode())  # the id of each class is part of the data
        h.update(f"background {self.background}\n".encode())  # it changes the pixels of transparent images
        for label, name in enumerate(progress_bar(class_dirs, desc=f"indexing {root}", unit="class", leave=False)):
            entries = _list_images(root / name) if (root / name).is_dir() else []
            if not entries and not allow_empty_classes:
                if (root / name).is_dir():
                    what = f"class folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                else:
                    what = "class folder is missing from this split, though another split has it"
                raise CtfgenError(f"{root / name}: {what}; {ALLOW_HINT}")
            for rel, size, mtime in entries:
                files.append(os.path.join(name, rel))
                labels.append(label)
                h.update(f"{name}/{rel}|{size}|{mtime}\n".encode())
        self.skipped, self.skipped_files = 0, []
        if skip_bad:
            files, labels = self._drop_unreadable(files, labels)
        # One numpy bytes array instead of a list of str: forked DataLoader workers then share it
        # instead of copying every string page as reference counts are touched.
        self.files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        # Which files were skipped follows from the listed content, so the hash needs no more.
        self.fingerprint = data_fingerprint("folder", split, h.hexdigest(), resolution, channels)

    def _drop_unreadable(self, files: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
        # PIL releases the GIL while decoding, so threads give a real speed-up here.
        paths = [str(self.root / f) for f in files]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            checks = pool.map(_readable, paths, chunksize=64)
            keep = list(progress_bar(checks, total=len(paths), desc=f"checking images in {self.root}", unit="img", leave=False))
        self.skipped = keep.count(False)
        self.skipped_files = [f for f, k in zip(files, keep) if not k]
        # a class left without readable images is refused by load_dataset's class check
        return [f for f, k in zip(files, keep) if k], [y for y, k in zip(labels, keep) if k]

    def transparent_count(self, n: int | None = None) -> int:
        # Headers only, on threads: a fraction of the cost of decoding the images once.
        paths = [str(self.root / os.fsdecode(f)) for f in self.files[:n]]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return sum(pool.map(_transparent, paths, chunksize=64))

    def describe(self) -> dict:
        return {**super().describe(), "background": ",".join(map(str, self.background))}

    def file(self, i: int) -> Path:
        """Absolute path of image i."""
        return self.root / os.fsdecode(self.files[self._index(i)])

    def original(self, i: int) -> Image.Image:
        """Image i as decoded, before cropping (in the configured channel mode)."""
        return open_image(self.file(i), self.channels, self.background)

    def uint8_image(self, i: int) -> np.ndarray:
        img = self.original(i)
        if img.size == (self.resolution, self.resolution):
            return to_hwc(img)  # already in the configured mode
        return center_crop_arr(img, self.resolution)

    def views(self, i: int, mode: str, crop_range: float = 1.1) -> list[np.ndarray]:
        # Ten-crop must see the uncropped image: its corners lie outside the centre crop.
        if mode == "tencrop":
            return make_views(self.original(i), mode, self.resolution, crop_range)
        return super().views(i, mode, crop_range)
