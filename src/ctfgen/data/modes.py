"""PIL image modes -> 8-bit grey or RGB, by stated rules; a mode with no such rule is refused.

| PIL mode | what is served |
|---|---|
| 1, L, RGB, P (no transparency), CMYK, YCbCr, LAB, HSV, RGBX | PIL's conversion to "L" / "RGB" (no colour management) |
| RGBA, LA, PA, RGBa, La, and P / L / RGB with a transparent colour (tRNS) | composited onto the background colour |
| I;16, I;16L, I;16B, I;16N (16-bit grey) | round(v / 257): 0 -> 0, 65535 -> 255, 257*k -> k |
| I (32-bit integers), F (32-bit floats) | refused: the file does not say what range the values span (an "I" image read from a PNG, as Pillow < 10 reads 16-bit grey PNGs, is 16-bit) |

PIL's own conversion of a 16-bit image to "L" or "RGB" clips at 255 (issue 22: a 16-bit PNG came out
all white), and dropping alpha keeps whatever colour the file stores under transparent pixels, which
varies between editors; hence the rules above.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import CtfgenError

SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
REFUSED = {"I": "32-bit integer", "F": "32-bit floating-point"}
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | SIXTEEN_BIT
WHITE = (255, 255, 255)


def has_transparency(im: Image.Image) -> bool:
    """Whether `im` (opened; header read) has an alpha channel or a transparent colour, i.e. whether
    serving it composites it onto the background. Needs no pixel decoding."""
    return im.mode in ALPHA_MODES or "transparency" in im.info


def to_8bit(im: Image.Image, channels: int, background: tuple[int, int, int], path: str | os.PathLike) -> Image.Image:
    """`im` as an "L" (channels 1) or "RGB" (channels 3) image by the rules of this module.

    background: the RGB colour transparent pixels show (grey images get its luma).
    Raises CtfgenError naming `path` and the mode for modes without a rule (I, F).
    """
    want = "L" if channels == 1 else "RGB"
    if im.mode == "I" and im.format == "PNG":
        im = im.convert("I;16")  # Pillow < 10 opens 16-bit grey PNGs as "I"; PNG holds no wider integers
    if im.mode in REFUSED:
        raise CtfgenError(
            f"{path}: {REFUSED[im.mode]} pixels (PIL mode {im.mode}) have no stated range, so they cannot be "
            "mapped to 8 bits without guessing; save the image as 8-bit or 16-bit (e.g. a 16-bit PNG)")
    if im.mode in SIXTEEN_BIT:
        v = np.asarray(im, dtype=np.uint32)  # any byte order -> native integers
        return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), mode="L").convert(want)
    if has_transparency(im):
        if im.mode == "La":  # premultiplied grey: PIL converts it only to LA
            im = im.convert("LA")
        rgba = im.convert("RGBA")  # applies a tRNS colour or palette transparency as alpha
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert(want)
    return im.convert(want)
