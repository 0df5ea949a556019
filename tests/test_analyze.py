"""Redundancy measurement: token swaps within a cluster vs across the codebook."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctfgen.apps.cli import main
from ctfgen.cluster import CoarseMap, build_coarse_map
from ctfgen.errors import ArtifactError
from ctfgen.experiments.analyze import (
    markdown_table,
    measure_redundancy,
    psnr_per_image,
    save_figure,
    same_cluster_swap,
)

pytest.importorskip("ctfgen.tokenizer")
from ctfgen.tokenizer import VQModel, save_tokenizer, vq_preset  # noqa: E402
from ctfgen.tokenizer.artifact import TokenizerArtifact  # noqa: E402


def tiny_tokenizer(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    cfg = vq_preset("fmnist", ch=8, z_channels=8, norm_groups=4, codebook_size=64, codebook_dim=4,
                    ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    return VQModel(cfg).eval()


def tiny_images(n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


def test_psnr_is_infinite_free_and_ordered():
    x = tiny_images(2)
    assert torch.allclose(psnr_per_image(x, x), torch.full((2,), 100.0))
    assert bool((psnr_per_image(x + 0.01, x) > psnr_per_image(x + 0.1, x)).all())


def test_same_cluster_swap_keeps_coarse_labels():
    cmap = CoarseMap.from_labels(torch.arange(64) % 4)
    codes = torch.randint(0, 64, (3, 8, 8))
    swapped = same_cluster_swap(codes, cmap, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cmap.coarse_of(swapped), cmap.coarse_of(codes))
    assert bool((swapped != codes).any())


def test_measure_redundancy_rows_and_examples(tmp_path):
    tok = tiny_tokenizer()
    codebook = tok.quantize.embedding.weight.detach()
    maps = [build_coarse_map(codebook, k, method=m) for k in (4, 32) for m in ("kmeans", "random")]
    # A map of singletons' worth: K = V leaves every token as it is, so no distortion at all.
    maps.append(CoarseMap.from_labels(torch.arange(64), method="identity"))

    calls = []

    def features(x):
        calls.append(len(x))
        return x.flatten(1)[:, :10], x.flatten(1)[:, :3]

    result = measure_redundancy(tok, tiny_images(), maps, seed=1, batch_size=5, n_show=3, feature_fn=features)
    assert [(r.swap, r.method, r.k) for r in result.rows] == [
        ("same_cluster", "kmeans", 4), ("same_cluster", "random", 4), ("same_cluster", "kmeans", 32),
        ("same_cluster", "random", 32), ("same_cluster", "identity", 64), ("random_code", "-", 0),
    ]
    identity, rand = result.rows[-2], result.rows[-1]
    assert identity.changed == 0 and identity.mse == 0 and identity.psnr == 100.0 and identity.pred_agree == 1.0
    assert rand.changed > 0.9 and rand.mse > 0 and rand.feat_dist > 0 and rand.feat_rel is not None
    for r in result.rows:
        assert np.isfinite([r.mse, r.psnr, r.changed]).all()
    assert set(result.examples) == {"input", "clean", "kmeans K=4", "random K=4", "kmeans K=32", "random K=32", "identity K=64", "random code"}
    assert all(v.shape == (3, 1, 16, 16) for v in result.examples.values())
    assert sum(calls) == 12 * (1 + len(result.rows))  # clean + every condition, in batches of 5

    again = measure_redundancy(tok, tiny_images(), maps, seed=1, batch_size=12, n_show=3)
    assert [r.mse for r in again.rows] == pytest.approx([r.mse for r in result.rows], rel=1e-5)

    table = markdown_table(result)
    assert "| same_cluster | kmeans | 32 |" in table and "same prediction" in table
    save_figure(result, tmp_path / "fig.png", title="test")
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_maps_from_another_tokenizer_are_refused():
    tok = TokenizerArtifact(tiny_tokenizer())  # its fingerprint: the hash of its weights
    cmap = CoarseMap.from_labels(torch.arange(64) % 4, tokenizer_fingerprint="tok-B")
    with pytest.raises(ArtifactError, match=f"tok-B.*{tok.fingerprint}"):
        measure_redundancy(tok, tiny_images(2), [cmap])


def test_cli_redundancy(tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    save_tokenizer(tiny_tokenizer(), tok_dir)
    images = (np.random.default_rng(0).random((20, 16, 16)) * 255).astype(np.uint8)
    np.savez(tmp_path / "test.npz", images=images, labels=np.arange(20) % 3)
    out = tmp_path / "report"
    argv = ["analyze", "redundancy", "--tokenizer", str(tok_dir), "--data", "npz", "--data-path", str(tmp_path),
            "--n", "10", "--k", "4", "16", "--methods", "kmeans", "balanced", "random", "agglomerative",
            "--batch-size", "4", "--show", "3", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| same_cluster | agglomerative | 16 |" in text and "saved:" in text
    report = json.loads((out / "redundancy.json").read_text())
    assert report["n_images"] == 10 and len(report["rows"]) == 4 * 2 + 1
    assert (out / "redundancy.png").is_file() and (out / "redundancy.md").read_text().count("\n| ") == 10
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "redundancy_report" and manifest["made_from"]["tokenizer"] == report["tokenizer"]["fingerprint"]
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err


def test_cli_redundancy_with_classifier_features(tmp_path, capsys):
    evaluate = pytest.importorskip("ctfgen.evaluate")
    from ctfgen.evaluate.classifier import ClassifierConfig, ClassifierTrainConfig, DomainClassifier

    torch.manual_seed(0)
    clf = DomainClassifier(ClassifierConfig(resolution=16, channels=1, num_classes=3, width=4)).eval()
    evaluate.save_classifier(clf, tmp_path / "clf", train_cfg=ClassifierTrainConfig(), data={}, info={})
    save_tokenizer(tiny_tokenizer(), tmp_path / "tok")
    images = (np.random.default_rng(1).random((8, 16, 16)) * 255).astype(np.uint8)
    np.savez(tmp_path / "test.npz", images=images, labels=np.arange(8) % 3)
    argv = ["analyze", "redundancy", "--tokenizer", str(tmp_path / "tok"), "--data", "npz", "--data-path", str(tmp_path),
            "--n", "8", "--k", "4", "--methods", "kmeans", "--classifier", str(tmp_path / "clf"), "--quiet",
            "--out", str(tmp_path / "report")]
    assert main(argv) == 0
    assert "same prediction" in capsys.readouterr().out
    rows = json.loads((tmp_path / "report" / "redundancy.json").read_text())["rows"]
    assert all(r["feat_dist"] is not None and 0 <= r["pred_agree"] <= 1 for r in rows)
