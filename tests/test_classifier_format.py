"""The domain classifier takes its image format from the data, and `eval` refuses samples of another
format (issue 22: a grey classifier scored RGB samples by their luma: classifier-FID 2.37 instead of 8.37)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ctfgen.apps.cli import main
from ctfgen.data import DataConfig
from ctfgen.evaluate import ClassifierConfig, ClassifierTrainConfig, DomainClassifier, Reference, evaluate_images
from ctfgen.evaluate.classifier import save_classifier
from ctfgen.errors import CtfgenError

RNG = np.random.default_rng(0)


def _colour_tree(root, size=8, n=6, grey=False, sizes=None):
    """Two classes (reddish, bluish) in train/ and test/ folders of PNGs."""
    for split in ("train", "test"):
        for c, name in enumerate(("red", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                s = sizes[i % len(sizes)] if sizes else size
                px = RNG.integers(0, 60, (s, s, 3), dtype=np.uint8)
                px[..., 0 if c == 0 else 2] += 180
                im = Image.fromarray(px)
                (im.convert("L") if grey else im).save(root / split / name / f"{i}.png")
    return root


def _classifier_config(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["config"]["model"]


def test_classifier_train_takes_channels_and_size_from_rgb_data(tmp_path, capsys):
    data = _colour_tree(tmp_path / "rgb", size=8)
    assert main(["classifier", "train", "--data", "folder", "--data-path", str(data), "--out", str(tmp_path / "clf"),
                 "--epochs", "1", "--width", "4", "--batch-size", "4"]) == 0
    assert "image format: 3 channel(s), 8x8" in capsys.readouterr().out
    cfg = _classifier_config(tmp_path / "clf")
    assert (cfg["channels"], cfg["resolution"]) == (3, 8)
    # explicit flags still choose
    assert main(["classifier", "train", "--data", "folder", "--data-path", str(data), "--out", str(tmp_path / "g"),
                 "--epochs", "1", "--width", "4", "--batch-size", "4", "--channels", "1", "--resolution", "4"]) == 0
    cfg = _classifier_config(tmp_path / "g")
    assert (cfg["channels"], cfg["resolution"]) == (1, 4)


def test_stored_format_of_each_source(tmp_path):
    from ctfgen.data import stored_format

    grey = _colour_tree(tmp_path / "grey", size=12, grey=True)
    assert stored_format(DataConfig(source="folder", path=str(grey)))[:2] == (1, 12)
    mixed = _colour_tree(tmp_path / "mixed", sizes=[8, 10])
    channels, resolution, what = stored_format(DataConfig(source="folder", path=str(mixed)))
    assert (channels, resolution) == (3, None) and "short sides [8, 10] differ" in what
    np.savez(tmp_path / "c.npz", images=np.zeros((4, 6, 6, 3), np.uint8), labels=np.arange(4) % 2)
    assert stored_format(DataConfig(source="npz", path=str(tmp_path / "c.npz")))[:2] == (3, 6)


def test_classifier_train_refuses_mixed_sizes_without_resolution(tmp_path, capsys):
    mixed = _colour_tree(tmp_path / "mixed", sizes=[8, 10])
    assert main(["classifier", "train", "--data", "folder", "--data-path", str(mixed), "--out", str(tmp_path / "x")]) == 2
    assert "give --resolution" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _grey_classifier(out):
    model = DomainClassifier(ClassifierConfig(resolution=8, channels=1, num_classes=2, width=4))
    save_classifier(model, out, train_cfg=ClassifierTrainConfig(), data={"train": {"fingerprint": "d"}},
                    info={"test_accuracy": 0.9})
    return model


def test_eval_refuses_a_classifier_of_another_format(tmp_path, capsys):
    model = _grey_classifier(tmp_path / "clf")
    rgb = RNG.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=rgb)
    code = main(["eval", str(tmp_path / "samples.npz"), "--classifier", str(tmp_path / "clf"), "--inception", "none",
                 "--ref", str(tmp_path / "samples.npz"), "--cache", "none", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "takes 8x8 images with 1 channel(s), but the samples are 8x8 with 3" in err
    assert not (tmp_path / "samples.eval.json").exists()
    with pytest.raises(CtfgenError, match="takes 8x8 images with 1 channel"):
        evaluate_images(rgb, reference=Reference(rgb, None, "r", {}), classifier=model, progress=False)
    from ctfgen.evaluate.core import check_classifier_input

    check_classifier_input(model, np.repeat(rgb[..., :1], 3, axis=3))  # grey stored as RGB: exact, accepted
    with pytest.raises(CtfgenError, match="but the samples are 16x16 with 1"):
        grey16 = RNG.integers(0, 256, (20, 16, 16, 1), dtype=np.uint8)
        evaluate_images(grey16, reference=Reference(grey16, None, "r", {}), classifier=model, progress=False)


def test_tokenizer_train_keeps_the_colour_of_rgb_data(tmp_path, capsys, monkeypatch):
    """The fmnist preset is grey; on colour data without --channels the tokenizer is RGB (was: grey, silently)."""
    import ctfgen.tokenizer.train as tokenizer_train

    seen = {}
    monkeypatch.setattr(tokenizer_train, "train_tokenizer", lambda cfg, out, **kw: seen.setdefault("cfg", cfg) and {})
    data = _colour_tree(tmp_path / "rgb", size=8)
    argv = ["tokenizer", "train", "--data", "folder", "--data-path", str(data), "--out", str(tmp_path / "tok")]
    assert main(argv) == 0
    assert (seen["cfg"].vq.channels, seen["cfg"].data.channels, seen["cfg"].vq.resolution) == (3, 3, 32)
    assert "channels: 3, the data's, not the fmnist preset's 1" in capsys.readouterr().out
    seen.clear()
    assert main(argv + ["--channels", "1"]) == 0 and seen["cfg"].vq.channels == 1
    grey = _colour_tree(tmp_path / "grey", size=8, grey=True)
    seen.clear()
    assert main(["tokenizer", "train", "--data", "folder", "--data-path", str(grey), "--out", str(tmp_path / "t2")]) == 0
    assert seen["cfg"].vq.channels == 1
