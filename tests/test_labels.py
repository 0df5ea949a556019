"""Class ids are checked wherever they enter: encode, a code store written by hand, training,
`eval nll` and sampling refuse ids outside [0, num_classes) naming the file (or argument), the
value, and, for labels counted from 1, the fix. The id num_classes itself is the case that matters:
it indexes the guidance null class, so it used to train and score that class silently."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctfgen.apps.cli import main as cli_main
from ctfgen.artifacts import fingerprint_tensors, write_manifest
from ctfgen.errors import CtfgenError
from test_sample import CLASSES, GRID, TINY_VQ, VOCAB, make_folders


def write_store(folder, labels, *, tokenizer: str, num_classes: int = CLASSES):
    """A code store as someone might write it by hand: codes.npy, labels.npy and a manifest."""
    folder.mkdir(parents=True)
    labels = np.asarray(labels, dtype=np.int64)
    codes = np.random.default_rng(0).integers(0, VOCAB, (len(labels), 1, GRID * GRID)).astype(np.uint16)
    np.save(folder / "codes.npy", codes)
    np.save(folder / "labels.npy", labels)
    write_manifest(folder, kind="codes", fingerprint=fingerprint_tensors({"codes": codes, "labels": labels}),
                   config={"grid": [GRID, GRID], "vocab_size": VOCAB, "num_classes": num_classes, "views": 1,
                           "split": "test"},
                   made_from={"tokenizer": tokenizer, "data": "data0"})
    return folder


ONE_BASED = [1, 2, 3] * 4  # three classes counted from 1: the id 3 is the null class


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("labels"))


@pytest.fixture(scope="module")
def tok_fp(folders):
    import json

    return json.loads((folders["tokenizer"] / "manifest.json").read_text())["fingerprint"]


@pytest.mark.parametrize("labels,value,hint", [(ONE_BASED, 3, True), ([0, 1, -1], -1, False), ([0, 4, 1], 4, False)])
def test_a_hand_written_store_with_bad_labels_is_refused_on_opening(tmp_path, labels, value, hint):
    from ctfgen.codes import CodeStore

    store = write_store(tmp_path / "codes", labels, tokenizer="tok0")
    with pytest.raises(CtfgenError) as e:
        CodeStore.open(store)
    msg = str(e.value)
    assert str(store / "labels.npy") in msg and f"class id {value} " in msg and "[0, 3)" in msg
    assert ("labels run 1..N? subtract 1" in msg) == hint


def test_encode_refuses_labels_beyond_the_class_names_and_writes_nothing(tmp_path):
    """The data set refuses them as it loads (data/dataset.py), before encode writes anything."""
    from ctfgen.codes import encode_dataset
    from ctfgen.data import DataConfig, load_dataset
    from ctfgen.tokenizer import VQModel, vq_preset

    yy, xx = np.mgrid[:16, :16]
    images = np.stack([(255 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / (4 + c))).astype(np.uint8) for c in range(6)])
    np.savez(tmp_path / "test.npz", images=images, labels=np.array([1, 2, 3, 1, 2, 3]),
             class_names=np.array(["a", "b", "c"]))
    config = DataConfig(source="npz", path=str(tmp_path / "test.npz"), resolution=16, channels=1)
    torch.manual_seed(0)
    tok = VQModel(vq_preset("fmnist", **TINY_VQ))
    with pytest.raises(CtfgenError, match=r"test.npz: labels \(test, 3 classes\): class id 3 at position 2 .*subtract 1"):
        encode_dataset(tok, load_dataset(config, "test"), tmp_path / "codes", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz"]


def test_training_on_one_based_labels_is_refused(tmp_path, capsys, tok_fp):
    store = write_store(tmp_path / "codes", ONE_BASED * 2, tokenizer=tok_fp)
    rc = cli_main(["train", "baseline", "--codes", str(store), "--out", str(tmp_path / "run"), "--steps", "1",
                   "--batch-size", "8", "--device", "cpu", "--no-progress", "--model-opt", "n_layer=1",
                   "--model-opt", "n_head=2", "--model-opt", "dim=32"])
    err = capsys.readouterr().err
    assert rc != 0 and "labels.npy" in err and "subtract 1" in err
    assert not (tmp_path / "run").exists()


def test_eval_nll_on_one_based_labels_exits_non_zero(tmp_path, capsys, folders, tok_fp):
    store = write_store(tmp_path / "codes", ONE_BASED, tokenizer=tok_fp)
    rc = cli_main(["eval", "nll", "--codes", str(store), "--baseline", str(folders["baseline"]), "--device", "cpu",
                   "--quiet", "--out", str(tmp_path / "nll.json")])
    captured = capsys.readouterr()
    assert rc != 0 and "class id 3" in captured.err and "subtract 1" in captured.err
    assert not (tmp_path / "nll.json").exists()


def test_heldout_nll_refuses_labels_of_more_classes_than_the_model_has(tmp_path, folders):
    """A valid store of 4 classes scored by a model of 3: class 3 is that model's null class."""
    from ctfgen.evaluate.nll import heldout_nll
    from ctfgen.models.artifact import TrainedModel

    model = TrainedModel.load(folders["baseline"]).module
    with pytest.raises(CtfgenError, match=r"store/labels.npy \(scored by the baseline model, 3 classes\): class id 3"):
        heldout_nll({"baseline": model}, torch.zeros(4, GRID * GRID, dtype=torch.long), torch.tensor([0, 1, 2, 3]),
                    where="store/labels.npy")


def test_sampling_refuses_the_null_class(folders, tmp_path, capsys):
    from ctfgen.sample import BaselinePipeline

    pipe = BaselinePipeline.from_folders(tokenizer=folders["tokenizer"], baseline=folders["baseline"])
    with pytest.raises(CtfgenError, match=r"class_labels: class id 3 at position 1 .*subtract 1"):
        pipe.generate([1, 3])
    rc = cli_main(["sample", "--tokenizer", str(folders["tokenizer"]), "--baseline", str(folders["baseline"]),
                   "--classes", "3", "--device", "cpu", "--no-progress", "--npz", str(tmp_path / "s.npz")])
    assert rc != 0 and "--classes: class id 3" in capsys.readouterr().err
