"""The dataset layer on tiny data made here: idx (raw and gz), image-folder trees and npz files."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctfgen.config import from_dict, to_dict
from ctfgen.data import (
    FASHION_MNIST_CLASSES,
    DataConfig,
    center_crop_arr,
    load_dataset,
    make_views,
    to_tensor,
)
from ctfgen.errors import CtfgenError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- helpers that make data


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_dir(root: Path, n_train=12, n_test=6, size=28, train_classes=5, test_classes=5) -> Path:
    """train files gzipped, test files raw, so both encodings are exercised."""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", RNG.integers(1, 256, (n_train, size, size)))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_train) % train_classes)
    write_idx(root / "t10k-images-idx3-ubyte", RNG.integers(1, 256, (n_test, size, size)))
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(n_test) % test_classes)
    return root


def save_image(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def make_folder_tree(root: Path) -> Path:
    """Classes 'b_dog' and 'a_cat' (sorted: cat first), mixed sizes, formats and modes."""
    save_image(root / "a_cat" / "1.png", RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    save_image(root / "a_cat" / "2.jpg", RNG.integers(0, 256, (70, 33, 3), dtype=np.uint8), quality=90)
    save_image(root / "a_cat" / "3.png", RNG.integers(0, 256, (16, 16), dtype=np.uint8))  # grey, exact size
    save_image(root / "b_dog" / "x.png", RNG.integers(0, 256, (100, 80, 4), dtype=np.uint8))  # RGBA
    save_image(root / "b_dog" / "sub" / "é.JPEG", RNG.integers(0, 256, (20, 50, 3), dtype=np.uint8))
    (root / "b_dog" / "notes.txt").write_text("not an image, ignored")
    return root


# ---------------------------------------------------------------- idx


def test_idx_shapes_labels_and_padding(tmp_path):
    d = make_idx_dir(tmp_path / "mnist", train_classes=4)
    with pytest.raises(CtfgenError, match=r"id\(s\) 4 .*allow-empty-classes"):
        load_dataset(DataConfig(source="idx", path=str(d)), "train")  # class 4 is only in the test split
    ds = load_dataset(DataConfig(source="idx", path=str(d), allow_empty_classes=True), "train")
    assert len(ds) == 12 and ds.resolution == 32 and ds.channels == 1
    assert ds.labels.dtype == np.int64 and list(ds.labels[:5]) == [0, 1, 2, 3, 0]
    # Class count spans both splits: test has label 4 although train stops at 3.
    assert ds.num_classes == 5 and ds.class_names == ["0", "1", "2", "3", "4"]
    x, y = ds[1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == 1 and isinstance(y, int)
    assert -1.0 <= x.min() and x.max() <= 1.0
    img = ds.uint8_image(1)
    raw = np.frombuffer(gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    raw = raw.reshape(12, 28, 28)[1]
    assert img.shape == (32, 32, 1) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[2:30, 2:30, 0], raw)  # padded, not resampled
    assert img[:2].max() == 0 and img[:, 30:].max() == 0
    assert ds[-1][1] == int(ds.labels[-1])
    with pytest.raises(IndexError):
        ds[12]

    test = load_dataset(DataConfig(source="idx", path=str(d)), "test")
    assert len(test) == 6 and test.num_classes == 5


def test_idx_rgb_and_resize(tmp_path):
    d = make_idx_dir(tmp_path / "m")
    rgb = load_dataset(DataConfig(source="idx", path=str(d), channels=3), "train")
    x, _ = rgb[0]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    small = load_dataset(DataConfig(source="idx", path=str(d), resolution=16), "train")
    assert small.uint8_image(0).shape == (16, 16, 1)  # 28 -> 16 goes through ADM resizing


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b[:3], "too short"),
        (lambda b: b + b"\x00", "trailing"),
    ],
)
def test_idx_corrupt_file_names_the_file(tmp_path, damage, message):
    d = make_idx_dir(tmp_path / "m")
    bad = d / "t10k-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(CtfgenError, match=message) as e:
        load_dataset(DataConfig(source="idx", path=str(d)), "test")
    assert str(bad) in str(e.value)


def test_idx_bad_gzip_count_mismatch_and_missing(tmp_path):
    d = make_idx_dir(tmp_path / "m")
    gz = d / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(CtfgenError, match="train-images-idx3-ubyte.gz"):
        load_dataset(DataConfig(source="idx", path=str(d)), "train")

    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(CtfgenError, match="6 images but .* 5 labels"):
        load_dataset(DataConfig(source="idx", path=str(d)), "test")

    os.remove(d / "t10k-labels-idx1-ubyte")
    with pytest.raises(CtfgenError, match="t10k-labels-idx1-ubyte"):
        load_dataset(DataConfig(source="idx", path=str(d)), "test")
    with pytest.raises(CtfgenError, match="unknown split"):
        load_dataset(DataConfig(source="idx", path=str(d)), "dev")


# ---------------------------------------------------------------- preprocessing and views


@pytest.mark.parametrize("h, w, res", [(40, 60, 16), (70, 33, 16), (300, 500, 32), (10, 12, 16), (16, 16, 16)])
def test_center_crop_arr_size(h, w, res):
    for c in (1, 3):
        out = center_crop_arr(RNG.integers(0, 256, (h, w, c), dtype=np.uint8), res)
        assert out.shape == (res, res, c) and out.dtype == np.uint8


def test_center_crop_arr_box_halves_large_images():
    # 128 -> 32 is two BOX halvings and no bicubic step, so output pixels are 4x4 block means
    # (up to PIL's rounding, which can add about one level per halving). A bicubic resize would
    # be off by several levels on noise.
    img = RNG.integers(0, 256, (128, 128, 1), dtype=np.uint8)
    expected = img[:, :, 0].reshape(32, 4, 32, 4).astype(float).mean(axis=(1, 3))
    got = center_crop_arr(img, 32)[:, :, 0].astype(float)
    assert np.abs(got - expected).max() <= 2.0


def test_center_crop_arr_keeps_the_centre():
    img = np.zeros((20, 60, 1), np.uint8)
    img[:, 20:40] = 255  # the middle third, which is exactly the centre square
    np.testing.assert_array_equal(center_crop_arr(img, 20), img[:, 20:40])


def test_make_views_counts_and_flip():
    img = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    (v,) = make_views(img, "none", 16)
    np.testing.assert_array_equal(v, img)
    a, b = make_views(img, "flip", 16)
    np.testing.assert_array_equal(a, img)
    np.testing.assert_array_equal(b, img[:, ::-1])
    ten = make_views(Image.fromarray(img), "tencrop", 16, crop_range=1.25)
    assert len(ten) == 10 and all(t.shape == (16, 16, 3) for t in ten)
    big = center_crop_arr(img, 20)
    np.testing.assert_array_equal(ten[0], big[:16, :16])
    np.testing.assert_array_equal(ten[3], big[4:, 4:])
    np.testing.assert_array_equal(ten[4], big[2:18, 2:18])
    for k in range(5):
        np.testing.assert_array_equal(ten[5 + k], ten[k][:, ::-1])
    with pytest.raises(CtfgenError, match="view mode"):
        make_views(img, "rotate", 16)


def test_to_tensor_range_and_layout():
    img = np.array([[[0, 255, 127]]], np.uint8)
    t = to_tensor(img)
    assert t.shape == (3, 1, 1)
    assert t[0].item() == -1.0 and t[1].item() == 1.0 and abs(t[2].item() - (127 / 127.5 - 1)) < 1e-6
    assert to_tensor(np.zeros((4, 5, 6, 3), np.uint8)).shape == (4, 3, 5, 6)


# ---------------------------------------------------------------- image folders


def test_folder_tree_layouts_and_channels(tmp_path):
    flat = make_folder_tree(tmp_path / "flat")
    ds = load_dataset(DataConfig(source="folder", path=str(flat), resolution=16, channels=3))
    assert ds.class_names == ["a_cat", "b_dog"] and ds.num_classes == 2
    assert list(ds.labels) == [0, 0, 0, 1, 1] and len(ds) == 5
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and y == ds.labels[i]
    grey = load_dataset(DataConfig(source="folder", path=str(flat), resolution=16, channels=1), "val")
    assert grey.uint8_image(3).shape == (16, 16, 1)  # RGBA -> L; flat layout serves any split
    json.dumps(ds.describe())
    assert ds.describe()["n"] == 5 and ds.describe()["source"] == "folder"

    split_root = tmp_path / "split"
    make_folder_tree(split_root / "train")
    save_image(split_root / "val" / "a_cat" / "v.png", RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    with pytest.raises(CtfgenError, match="val/b_dog: class folder is missing from this split"):
        load_dataset(DataConfig(source="folder", path=str(split_root), resolution=16, channels=3), "val")
    val = load_dataset(DataConfig(source="folder", path=str(split_root), resolution=16, channels=3,
                                  allow_empty_classes=True), "val")
    # ids are decided over every split: b_dog keeps id 1 in val although val has none of it
    assert len(val) == 1 and val.class_names == ["a_cat", "b_dog"] and list(val.labels) == [0]
    with pytest.raises(CtfgenError, match="no 'test' folder"):
        load_dataset(DataConfig(source="folder", path=str(split_root)), "test")


def test_folder_corrupt_image_lazy_error_or_skip(tmp_path):
    root = make_folder_tree(tmp_path / "t")
    bad = root / "b_dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    cfg = DataConfig(source="folder", path=str(root), resolution=16, channels=3)
    ds = load_dataset(cfg)
    i = [str(ds.file(k)) for k in range(len(ds))].index(str(bad))
    with pytest.raises(CtfgenError, match="broken.png"):
        ds[i]
    skipping = load_dataset(DataConfig(**{**to_dict(cfg), "skip_bad": True}))
    assert skipping.skipped == 1 and len(skipping) == len(ds) - 1
    for k in range(len(skipping)):
        skipping[k]
    # A truncated JPEG is caught too.
    jpg = root / "a_cat" / "2.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    assert load_dataset(DataConfig(**{**to_dict(cfg), "skip_bad": True})).skipped == 2


def test_folder_empty_class_and_empty_tree(tmp_path):
    root = make_folder_tree(tmp_path / "t")
    (root / "c_empty").mkdir()
    with pytest.raises(CtfgenError, match="c_empty"):
        load_dataset(DataConfig(source="folder", path=str(root)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CtfgenError, match="no class sub-folders"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "nothing")))
    with pytest.raises(CtfgenError, match="not found"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "missing")))


def test_folder_views_use_the_uncropped_image(tmp_path):
    root = tmp_path / "t"
    wide = RNG.integers(0, 256, (32, 96, 3), dtype=np.uint8)
    save_image(root / "only" / "w.png", wide)
    ds = load_dataset(DataConfig(source="folder", path=str(root), resolution=16, channels=3))
    assert len(ds.views(0, "none")) == 1
    a, b = ds.views(0, "flip")
    np.testing.assert_array_equal(a, ds.uint8_image(0))
    np.testing.assert_array_equal(b, a[:, ::-1])
    ten = ds.views(0, "tencrop", crop_range=1.5)
    big = center_crop_arr(wide, 24)  # from the original, not from the 16x16 centre crop
    assert len(ten) == 10
    np.testing.assert_array_equal(ten[0], big[:16, :16])
    np.testing.assert_array_equal(ten[9], big[4:20, 4:20][:, ::-1])


# ---------------------------------------------------------------- npz


def test_npz_file_and_folder(tmp_path):
    imgs = RNG.integers(0, 256, (7, 24, 24, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
    f = tmp_path / "data.npz"
    np.savez(f, imgs, labels)  # arr_0 / arr_1
    ds = load_dataset(DataConfig(source="npz", path=str(f), resolution=24, channels=3), "whatever")
    assert len(ds) == 7 and ds.num_classes == 3 and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.uint8_image(2), imgs[2])
    grey = load_dataset(DataConfig(source="npz", path=str(f), resolution=16, channels=1))
    assert grey[0][0].shape == (1, 16, 16)  # RGB -> grey and ADM resize

    d = tmp_path / "splits"
    d.mkdir()
    np.savez(d / "train.npz", images=imgs[:, :, :, 0], labels=labels, class_names=np.array(["a", "b", "c"]))
    np.savez(d / "test.npz", images=imgs[:2], labels=np.array([3, 0]))
    train = load_dataset(DataConfig(source="npz", path=str(d), resolution=24), "train")
    assert train.class_names == ["a", "b", "c"] and train[0][0].shape == (1, 24, 24)
    with pytest.raises(CtfgenError, match=r"id\(s\) 1-2"):
        load_dataset(DataConfig(source="npz", path=str(d), resolution=24), "test")
    test = load_dataset(DataConfig(source="npz", path=str(d), resolution=24, allow_empty_classes=True), "test")
    assert test.num_classes == 4  # max label over every split in the folder
    with pytest.raises(CtfgenError, match="val.npz"):
        load_dataset(DataConfig(source="npz", path=str(d)), "val")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pictures": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(2, int)}, "'images' or 'arr_0'"),
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "'labels' or 'arr_1'"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, int)}, "2 images but 3 labels"),
        ({"images": np.zeros((2, 4, 4), np.float32), "labels": np.zeros(2, int)}, "uint8"),
        ({"images": np.zeros((2, 4, 4, 2), np.uint8), "labels": np.zeros(2, int)}, "shape"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(2, float)}, "integer"),
    ],
)
def test_npz_errors_name_file_and_problem(tmp_path, arrays, message):
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(CtfgenError, match=message) as e:
        load_dataset(DataConfig(source="npz", path=str(f)))
    assert str(f) in str(e.value)


# ---------------------------------------------------------------- fingerprints, config, loader


def test_fingerprints_follow_content(tmp_path):
    d = make_idx_dir(tmp_path / "m")
    cfg = DataConfig(source="idx", path=str(d))
    fp = load_dataset(cfg).fingerprint
    assert fp == load_dataset(cfg).fingerprint and len(fp) == 16
    assert fp != load_dataset(cfg, "test").fingerprint
    assert fp != load_dataset(DataConfig(source="idx", path=str(d), channels=3)).fingerprint
    write_idx(d / "train-labels-idx1-ubyte.gz", (np.arange(12) + 1) % 5)
    assert load_dataset(cfg).fingerprint != fp

    root = make_folder_tree(tmp_path / "t")
    fcfg = DataConfig(source="folder", path=str(root), resolution=16)
    ffp = load_dataset(fcfg).fingerprint
    assert load_dataset(fcfg).fingerprint == ffp
    save_image(root / "a_cat" / "1.png", RNG.integers(0, 256, (41, 60, 3), dtype=np.uint8))
    assert load_dataset(fcfg).fingerprint != ffp

    f = tmp_path / "x.npz"
    np.savez(f, images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 1]))
    ncfg = DataConfig(source="npz", path=str(f), resolution=8)
    nfp = load_dataset(ncfg).fingerprint
    np.savez(f, images=np.ones((2, 8, 8), np.uint8), labels=np.array([0, 1]))
    os.utime(f, ns=(1, 10**18))  # a different mtime even on coarse-clock file systems
    assert load_dataset(ncfg).fingerprint != nfp


def test_config_checks_and_round_trip():
    cfg = DataConfig(source="folder", path="x", resolution=64, channels=3, skip_bad=True)
    assert from_dict(DataConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    for bad in ({"source": "cifar"}, {"channels": 2}, {"resolution": 0}, {"source": "idx"}):
        with pytest.raises(CtfgenError):
            DataConfig(**bad)
    with pytest.raises(CtfgenError, match="Fashion-MNIST not found"):
        load_dataset(DataConfig(path="/nonexistent/fmnist"))


def test_uint8_images_matches_per_image_path(tmp_path):
    d = make_idx_dir(tmp_path / "m")
    f = tmp_path / "rgb.npz"
    np.savez(f, images=RNG.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8), labels=np.arange(5))
    cfgs = [
        DataConfig(source="idx", path=str(d)),
        DataConfig(source="idx", path=str(d), channels=3),
        DataConfig(source="idx", path=str(d), resolution=16),
        DataConfig(source="npz", path=str(f), resolution=24, channels=1),
        DataConfig(source="npz", path=str(f), resolution=20, channels=3),
        DataConfig(source="folder", path=str(make_folder_tree(tmp_path / "t")), resolution=16, channels=3),
    ]
    for cfg in cfgs:
        ds = load_dataset(cfg)
        pick = np.array([len(ds) - 1, 0, 2])
        expected = np.stack([ds.uint8_image(int(i)) for i in pick])
        np.testing.assert_array_equal(ds.uint8_images(pick), expected)
        assert ds.uint8_images().shape == (len(ds), cfg.resolution, cfg.resolution, cfg.channels)


def test_works_with_a_dataloader(tmp_path):
    d = make_idx_dir(tmp_path / "m")
    ds = load_dataset(DataConfig(source="idx", path=str(d), channels=3))
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 2, 3, 4]


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    train = load_dataset(DataConfig())
    test = load_dataset(DataConfig(), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.num_classes == 10 and train.class_names == FASHION_MNIST_CLASSES
    assert np.bincount(train.labels).tolist() == [6000] * 10
    x, y = train[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10
