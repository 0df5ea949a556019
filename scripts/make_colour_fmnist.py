"""A small colour data set for trying ctfgen on your own images (docs/DATA.md): Fashion-MNIST drawn in
one colour per class on white, as a class-folder tree of 32x32 PNGs, a quarter of them RGBA.

    python scripts/make_colour_fmnist.py OUT [--train-per-class 300] [--test-per-class 100]

writes OUT/train/<class name>/<n>.png and OUT/test/<class name>/<n>.png. A garment of intensity
a = x / 255 (x: the Fashion-MNIST pixel, 28x28 padded to 32x32 with 0) is drawn as
(1 - a) * white + a * colour, the colour being the class's (CLASS_COLOURS) with a random shift of up
to +-40 per channel per image. Every fourth image is instead saved as RGBA: the colour with alpha a,
and random colours stored under its transparent pixels, which composited onto white (`--background
white`, ctfgen's default) give the RGB drawing back to within rounding. Reads the Debian Fashion-MNIST
files only (CTFGEN_FASHION_MNIST or /usr/share/datasets/fashion-mnist); downloads nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ctfgen.data import FASHION_MNIST_CLASSES, DataConfig
from ctfgen.data.idx import load_split

# one colour per class, far apart in RGB
CLASS_COLOURS = [(200, 30, 30), (30, 140, 40), (40, 60, 200), (220, 150, 0), (140, 40, 170),
                 (0, 150, 160), (120, 80, 40), (230, 60, 150), (90, 90, 90), (20, 20, 110)]


def folder_name(name: str) -> str:
    return name.replace("/", "-").replace(" ", "_")


def write_split(out: Path, split: str, per_class: int, rng: np.random.Generator) -> tuple[int, int]:
    images, labels, _ = load_split(DataConfig().resolved_path(), split)
    written = rgba = 0
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        folder = out / split / folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            a = np.pad(images[i], 2).astype(np.float64)[..., None] / 255.0  # (32, 32, 1) in [0, 1]
            colour = np.clip(np.array(CLASS_COLOURS[c]) + rng.integers(-40, 41, 3), 0, 255)
            if n % 4 == 3:
                under = rng.integers(0, 256, (32, 32, 3))  # what an editor may leave under transparent pixels
                rgb = np.where(a > 0, colour, under)
                px = np.concatenate([rgb, np.rint(255 * a)], axis=2).astype(np.uint8)
                Image.fromarray(px, "RGBA").save(folder / f"{n:04d}.png")
                rgba += 1
            else:
                px = np.rint((1 - a) * 255 + a * colour).astype(np.uint8)
                Image.fromarray(px, "RGB").save(folder / f"{n:04d}.png")
            written += 1
    return written, rgba


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        written, rgba = write_split(args.out, split, n, rng)
        print(f"{args.out / split}: {written} PNGs in {len(FASHION_MNIST_CLASSES)} class folders, {rgba} of them RGBA")


if __name__ == "__main__":
    main()
