"""Class ids are decided, checked and stated, never taken on trust: gaps and empty classes are
refused unless asked for, class folders sort naturally, classes.json and the printed summary say
what was decided; a data set's own npz or folder serves as the evaluation reference; a classifier
too weak for its metrics is flagged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctfgen.apps.cli import main as cli_main
from ctfgen.data import DataConfig, dataset_class_table, describe_classes, load_dataset, natural_key
from ctfgen.errors import CtfgenError

RNG = np.random.default_rng(0)


def npz(path: Path, labels, size: int = 8) -> Path:
    labels = np.asarray(labels)
    np.savez(path, images=RNG.integers(0, 256, (len(labels), size, size), dtype=np.uint8), labels=labels)
    return path


def png(path: Path, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, size, dtype=np.uint8)).save(path)


# ---------------------------------------------------------------- labels of npz / idx data

def test_labels_from_one_leave_class_zero_empty_and_are_refused(tmp_path):
    f = npz(tmp_path / "digits.npz", np.arange(40) % 10 + 1)  # 1..10, as some exports number them
    cfg = DataConfig(source="npz", path=str(f), resolution=8)
    with pytest.raises(CtfgenError, match=r"1 of 11 class ids have no image: id\(s\) 0 .*start at 1: subtract 1"):
        load_dataset(cfg)
    ds = load_dataset(DataConfig(source="npz", path=str(f), resolution=8, allow_empty_classes=True))
    table = dataset_class_table(ds)
    assert ds.num_classes == 11 and table["classes"][0]["count"] == {"train": 0}
    assert [c["count"]["train"] for c in table["classes"][1:]] == [4] * 10


def test_a_stray_label_is_a_gap_of_a_thousand_classes(tmp_path):
    f = npz(tmp_path / "x.npz", [*range(9), 1000])
    with pytest.raises(CtfgenError, match=r"991 of 1001 class ids have no image: id\(s\) 9-999.*relabel"):
        load_dataset(DataConfig(source="npz", path=str(f), resolution=8))


def test_the_class_count_is_stated(tmp_path):
    f = npz(tmp_path / "x.npz", [0, 1, 1, 2, 2, 2])
    ds = load_dataset(DataConfig(source="npz", path=str(f), resolution=8))
    text = describe_classes(dataset_class_table(ds))
    assert text.splitlines()[0].startswith("3 classes (ids 0-2)") and "train 6" in text.splitlines()[0]
    assert [line.split() for line in text.splitlines()[1:]] == [["0", "0", "1"], ["1", "1", "2"], ["2", "2", "3"]]


# ---------------------------------------------------------------- class folders

def test_class_folders_sort_naturally(tmp_path):
    for c in range(12):
        png(tmp_path / "tree" / str(c) / "a.png")
    ds = load_dataset(DataConfig(source="folder", path=str(tmp_path / "tree"), resolution=8))
    assert ds.class_names == [str(c) for c in range(12)]
    # each image's label is the number its folder is named by
    assert [int(ds.file(i).parent.name) for i in range(len(ds))] == list(ds.labels)


def test_natural_order_keeps_equal_width_names_in_text_order():
    imagenet = ["n01440764", "n01443537", "n01484850", "n15075141"]
    assert sorted(imagenet, key=natural_key) == sorted(imagenet)
    assert sorted(["img10", "img2", "Img1", "img1"], key=natural_key) == ["Img1", "img1", "img2", "img10"]
    assert sorted(["07", "7", "10"], key=natural_key) == ["07", "7", "10"]


def test_empty_class_folder_kept_only_when_asked(tmp_path):
    png(tmp_path / "t" / "cat" / "1.png")
    (tmp_path / "t" / "dog").mkdir()
    with pytest.raises(CtfgenError, match="dog: class folder holds no image files.*--allow-empty-classes"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "t"), resolution=8))
    ds = load_dataset(DataConfig(source="folder", path=str(tmp_path / "t"), resolution=8, allow_empty_classes=True))
    assert ds.class_names == ["cat", "dog"] and list(dataset_class_table(ds)["classes"][1]["count"].values()) == [0]


def test_skip_bad_reports_what_it_skipped(tmp_path):
    for i in range(3):
        png(tmp_path / "t" / "a" / f"{i}.png")
    png(tmp_path / "t" / "b" / "0.png")
    (tmp_path / "t" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 8)
    ds = load_dataset(DataConfig(source="folder", path=str(tmp_path / "t"), resolution=8, skip_bad=True))
    table = dataset_class_table(ds)
    assert ds.skipped == 1 and ds.describe()["skipped_unreadable"] == 1
    assert table["skipped_unreadable"] == {"train": 1} and table["skipped_files"] == {"train": ["a/broken.png"]}
    assert "skipped 1 unreadable image file(s) in the train split (--skip-bad), e.g. a/broken.png" in describe_classes(table)
    # a class whose every image is unreadable is an empty class: refused unless asked for
    (tmp_path / "t" / "b" / "0.png").write_bytes(b"not an image")
    with pytest.raises(CtfgenError, match=r"id\(s\) 1 \(name\(s\) 'b'\)"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "t"), resolution=8, skip_bad=True))


# ---------------------------------------------------------------- CLI: classes.json, --ref, weak classifiers

@pytest.fixture(scope="module")
def classifier(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "clf"
    assert cli_main(["classifier", "train", "--data", "npz", "--data-path", tiny_data.path, "--resolution", "16",
                     "--out", str(out), "--epochs", "1", "--width", "4", "--device", "cpu"]) == 0
    return out


def test_classifier_writes_and_prints_its_classes(classifier, capsys):
    table = json.loads((classifier / "classes.json").read_text())
    assert table["num_classes"] == 3 and table["splits"] == ["train", "test"]
    assert [c["count"] for c in table["classes"]] == [{"train": 32, "test": 10}] * 3


def _samples(tiny_data, tmp_path) -> Path:
    with np.load(Path(tiny_data.path) / "test.npz") as f:
        images, labels = f["images"], f["labels"]
    np.savez(tmp_path / "samples.npz", arr_0=np.repeat(images[..., None], 3, axis=3), labels=labels)
    return tmp_path / "samples.npz"


def test_eval_takes_the_data_sets_own_npz_and_folder_as_reference(tiny_data, classifier, tmp_path):
    samples = _samples(tiny_data, tmp_path)
    common = ["--classifier", str(classifier), "--inception", "none", "--cache", "none", "--quiet"]
    for ref in (tiny_data.path, f"{tiny_data.path}:test", str(Path(tiny_data.path) / "test.npz")):
        assert cli_main(["eval", str(samples), "--ref", ref, "--out", str(tmp_path / "r.json"), *common]) == 0
        result = json.loads((tmp_path / "r.json").read_text())
        assert result["reference"]["used"] == 30 and result["reference"]["source"] == "npz", ref
    # images of another size are served at the samples' size by the data loader
    folder = tmp_path / "tree"
    with np.load(Path(tiny_data.path) / "test.npz") as f:
        for i, (img, y) in enumerate(zip(f["images"], f["labels"])):
            png(folder / "test" / f"class{y}" / f"{i}.png", (20, 20))
    assert cli_main(["eval", str(samples), "--ref", f"{folder}:test", "--out", str(tmp_path / "f.json"), *common]) == 0
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["reference"]["source"] == "folder" and result["reference"]["resolution"] == 16
    assert result["reference"]["channels"] == 3  # the samples' channels


def test_eval_warns_and_records_a_classifier_too_weak_to_trust(tiny_data, classifier, tmp_path, capsys):
    samples = _samples(tiny_data, tmp_path)
    manifest = json.loads((classifier / "manifest.json").read_text())
    weak = tmp_path / "weak"
    weak.mkdir()
    for f in classifier.iterdir():
        (weak / f.name).write_bytes(f.read_bytes())
    manifest["info"]["test_accuracy"] = 0.13
    (weak / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["eval", str(samples), "--ref", tiny_data.path, "--classifier", str(weak), "--inception", "none",
                     "--cache", "none", "--quiet", "--out", str(tmp_path / "w.json")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "test accuracy 0.130 is below 0.5" in err
    result = json.loads((tmp_path / "w.json").read_text())
    assert result["networks"]["classifier"]["accuracy_ok"] is False and "0.130" in result["warnings"][0]
    assert cli_main(["eval", str(samples), "--ref", tiny_data.path, "--classifier", str(weak), "--inception", "none",
                     "--cache", "none", "--quiet", "--out", str(tmp_path / "ok.json"),
                     "--min-classifier-accuracy", "0.1"]) == 0
    assert "warnings" not in json.loads((tmp_path / "ok.json").read_text())
