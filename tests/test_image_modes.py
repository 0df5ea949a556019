"""Image files of every PIL mode a folder data set may hold: each served by a stated rule or refused
(data/modes.py; issue 22: a 16-bit PNG came out all white, RGBA lost its alpha uncomposited)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ctfgen.apps.cli import main
from ctfgen.codes import encode_dataset
from ctfgen.data import DataConfig, load_dataset
from ctfgen.errors import CtfgenError
from ctfgen.evaluate import load_samples
from ctfgen.tokenizer import VQModel, load_tokenizer, save_tokenizer, vq_preset

# 4x4 images whose rows are alike (served at resolution 4 as they are); under transparent pixels
# the file stores red, which must not show.
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _rgba() -> Image.Image:
    return Image.fromarray(_rows([[*RED, 0], [*GREEN, 255], [*BLUE, 128], [*RED, 255]]), "RGBA")


def _rows(row) -> np.ndarray:
    return np.repeat(np.array([row], np.uint8), 4, axis=0)


def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 4))
    im.putpalette([*RED, *GREEN, *BLUE, 10, 20, 30] + [0] * (256 - 4) * 3)
    im.putdata([0, 1, 2, 3] * 4)
    if transparent:
        im.info["transparency"] = 0  # index 0 (red) is transparent
    return im


def _sixteen_bit(mode: str) -> Image.Image:
    values = np.repeat(np.array([[0, 257 * 100, 65535, 1000]], "<u2"), 4, axis=0)
    if mode == "I;16B":
        return Image.frombytes("I;16B", (4, 4), values.astype(">u2").tobytes())
    return Image.fromarray(values)


def _with_info(im: Image.Image, **info) -> Image.Image:
    im.info.update(info)
    return im


def _blend(fg, a, bg=(255, 255, 255)):
    # alpha compositing in 8 bits, as PIL rounds it (to within 1)
    return [round((f * a + b * (255 - a)) / 255) for f, b in zip(fg, bg)]


# mode label -> (image, file suffix, expected RGB pixels of the row or None for "PIL's own conversion")
CASES = {
    "1": (Image.fromarray(_rows([0, 255, 255, 0])).convert("1"), ".png",
          [(0, 0, 0), (255,) * 3, (255,) * 3, (0, 0, 0)]),
    "L": (Image.fromarray(_rows([0, 7, 128, 255])), ".png", [(0,) * 3, (7,) * 3, (128,) * 3, (255,) * 3]),
    "P": (_palette(False), ".png", [RED, GREEN, BLUE, (10, 20, 30)]),
    "P+transparency": (_palette(True), ".png", [(255, 255, 255), GREEN, BLUE, (10, 20, 30)]),
    "P+transparency (GIF)": (_palette(True), ".gif", [(255, 255, 255), GREEN, BLUE, (10, 20, 30)]),
    "RGB": (Image.fromarray(_rows([RED, GREEN, BLUE, (1, 2, 3)])), ".png", [RED, GREEN, BLUE, (1, 2, 3)]),
    "RGB+transparency": (_with_info(Image.fromarray(_rows([RED, GREEN, BLUE, RED])), transparency=RED), ".png",
                         [(255, 255, 255), GREEN, BLUE, (255, 255, 255)]),  # a tRNS colour key
    "RGBA": (_rgba(), ".png", [(255, 255, 255), GREEN, tuple(_blend(BLUE, 128)), RED]),
    "LA": (Image.fromarray(_rows([[200, 0], [200, 255], [0, 128], [50, 255]]), "LA"), ".png",
           [(255,) * 3, (200,) * 3, tuple(_blend((0, 0, 0), 128)), (50,) * 3]),
    "I;16": (_sixteen_bit("I;16"), ".png", [(0,) * 3, (100,) * 3, (255,) * 3, (4,) * 3]),  # 1000 / 257 = 3.9
    "I;16B": (_sixteen_bit("I;16B"), ".tif", [(0,) * 3, (100,) * 3, (255,) * 3, (4,) * 3]),
    "CMYK": (Image.new("CMYK", (4, 4), (0, 255, 0, 0)), ".tif", None),
}


def _folder(tmp_path, name: str, image: Image.Image, suffix: str):
    root = tmp_path / "data"
    (root / "only").mkdir(parents=True)
    path = root / "only" / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}{suffix}"
    image.save(path)
    return root, path


def _served(root, channels: int, **kw):
    return load_dataset(DataConfig(source="folder", path=str(root), resolution=4, channels=channels, **kw))


@pytest.mark.parametrize("mode", list(CASES))
def test_each_mode_is_served_by_its_rule(tmp_path, mode):
    image, suffix, expected = CASES[mode]
    root, path = _folder(tmp_path, mode, image, suffix)
    with Image.open(path) as stored:
        assert stored.mode == mode.split("+")[0].split(" ")[0]
        if expected is None:  # CMYK: PIL's conversion, no colour management
            stored.load()
            expected = [tuple(p) for p in np.asarray(stored.convert("RGB"))[0]]
    from ctfgen.data.folder import open_image

    rgb = np.asarray(open_image(path, 3))[0]
    np.testing.assert_allclose(rgb, np.array(expected), atol=1)
    grey = np.asarray(open_image(path, 1))[0]
    luma = np.asarray(Image.fromarray(np.array([expected], np.uint8)).convert("L"))[0]
    np.testing.assert_allclose(grey, luma, atol=1)
    # the data set serves these pixels, in both channel counts
    np.testing.assert_array_equal(_served(root, 3).uint8_image(0)[0], rgb)
    np.testing.assert_array_equal(_served(root, 1).uint8_image(0)[0, :, 0], grey)


@pytest.mark.parametrize("mode, suffix", [("I", ".tif"), ("F", ".tif")])
def test_modes_without_a_stated_range_are_refused_naming_file_and_mode(tmp_path, mode, suffix):
    values = np.array([[0, 100], [70000, 5]], np.int32 if mode == "I" else np.float32)
    root, path = _folder(tmp_path, mode, Image.fromarray(values), suffix)
    with Image.open(path) as stored:
        assert stored.mode == mode
    ds = _served(root, 1)
    with pytest.raises(CtfgenError, match=rf"{path.name}: .*PIL mode {mode}\)"):
        ds.uint8_image(0)


def test_sixteen_bit_samples_are_scaled_not_saturated(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(3):
        _sixteen_bit("I;16").save(folder / f"{i:03d}_c0.png")
    s = load_samples(folder, progress=False)
    assert s.images.shape == (3, 4, 4, 1)
    assert s.images[0, 0, :, 0].tolist() == [0, 100, 255, 4]


def test_background_option_recorded_and_in_the_fingerprint(tmp_path):
    root, _ = _folder(tmp_path, "RGBA", _rgba(), ".png")
    white = _served(root, 3)
    black = _served(root, 3, background="black")
    custom = _served(root, 3, background="10,20,30")
    assert white.describe()["background"] == "255,255,255" and custom.describe()["background"] == "10,20,30"
    assert len({white.fingerprint, black.fingerprint, custom.fingerprint}) == 3
    from ctfgen.data.folder import open_image

    assert tuple(np.asarray(open_image(white.file(0), 3, (10, 20, 30)))[0, 0]) == (10, 20, 30)
    with pytest.raises(CtfgenError, match="data.background: expected white, black or R,G,B"):
        DataConfig(source="folder", path=str(root), background="10,20,300")
    assert white.transparency_note() == (1, "1 of 1 train images have transparency: composited onto the "
                                            "background 255,255,255 (--background)")
    with pytest.raises(SystemExit):
        main(["encode", "--tokenizer", "t", "--out", "o", "--data", "folder", "--data-path", "d", "--background", "grey"])


def test_encode_prints_and_records_the_composited_count(tmp_path, capsys):
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        _rgba().resize((16, 16)).save(root / c / "alpha.png")
        Image.new("RGB", (16, 16), BLUE).save(root / c / "plain.png")
        _palette(True).resize((16, 16)).save(root / c / "pal.gif")
    torch.manual_seed(0)
    model = VQModel(vq_preset("fmnist", ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, codebook_size=64,
                              codebook_dim=4, resolution=16, channels=3))
    save_tokenizer(model, tmp_path / "tok")
    ds = load_dataset(DataConfig(source="folder", path=str(root), resolution=16, channels=3))
    store = encode_dataset(load_tokenizer(tmp_path / "tok"), ds, tmp_path / "codes", progress=False)
    assert "4 of 6 train images have transparency: composited onto the background 255,255,255" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    assert manifest["info"]["composited_images"] == 4
    assert manifest["made_from"]["data_description"]["background"] == "255,255,255"
    assert len(store) == 6


def test_an_i_mode_image_read_from_a_png_is_sixteen_bit():
    """Pillow < 10 opens a 16-bit grey PNG as mode "I"; a PNG holds nothing wider, so it is scaled as 16-bit."""
    from ctfgen.data.modes import to_8bit

    im = Image.fromarray(np.array([[0, 257 * 100, 65535, 1000]], np.int32))
    im.format = "PNG"  # as Image.open sets it
    assert np.asarray(to_8bit(im, 1, (255, 255, 255), "x.png")).tolist() == [[0, 100, 255, 4]]
    im.format = "TIFF"
    with pytest.raises(CtfgenError, match=r"x.tif: 32-bit integer pixels \(PIL mode I\)"):
        to_8bit(im, 1, (255, 255, 255), "x.tif")
