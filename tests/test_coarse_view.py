"""Coarse to fine made visible: cluster representatives, stage 1's labels (masked and unmasked
stage 2), the label-map / coarse-image / final-image triplets and `ctfgen sample --coarse-grid`."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import ctfgen.sample.pipeline as pipeline_mod
from ctfgen.apps.cli import main as cli_main
from ctfgen.errors import CtfgenError
from ctfgen.models import build_model
from ctfgen.sample import BaselinePipeline, CTFPipeline
from ctfgen.sample.coarse_view import cluster_colors, cluster_representatives, coarse_views, stage1_labels
from ctfgen.sample.outputs import triplet_images
from ctfgen.tokenizer import VQModel
from ctfgen.tokenizer.model import vq_preset
from test_sample import CLASSES, GRID, K, TINY_GPT, TINY_VQ, VOCAB, make_folders, randomize_head


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("coarse_view"))


def test_representative_is_the_member_nearest_the_centroid():
    # cluster 0: codes 0, 2, 3 at 0, 1, 5 (centroid 2 -> code 2); cluster 1: codes 1, 4 at 10, 12
    # (centroid 11, a tie -> the smaller index 1)
    codebook = torch.tensor([[0.0], [10.0], [1.0], [5.0], [12.0]])
    reps = cluster_representatives(codebook, torch.tensor([0, 1, 0, 0, 1]), 2)
    assert reps.tolist() == [2, 1]
    with pytest.raises(CtfgenError, match="cluster 2 has no code"):
        cluster_representatives(codebook, torch.tensor([0, 1, 0, 0, 1]), 3)


def test_cluster_colors_are_distinct():
    colors = cluster_colors(128)
    assert colors.shape == (128, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors.tolist()}) == 128


def _record_stage1(monkeypatch) -> list[torch.Tensor]:
    """What CTFPipeline's stage 1 really drew, batch by batch."""
    drawn = []
    real = pipeline_mod.generate_tokens

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        drawn.append(out.cpu().clone())
        return out

    monkeypatch.setattr(pipeline_mod, "generate_tokens", recording)
    return drawn


@pytest.mark.parametrize("masked", [True, False])
def test_stage1_labels_are_what_stage1_drew(masked, monkeypatch):
    torch.manual_seed(0)
    c2c = torch.arange(VOCAB) % K
    common = dict(vocab_size=VOCAB, num_classes=CLASSES, grid=GRID, coarse_vocab=K, **TINY_GPT)
    ar = randomize_head(build_model("ar", "tiny", **common), 1)
    aux = randomize_head(build_model("aux", "tiny", code_to_coarse=c2c, mask_to_cluster=masked, **common), 2)
    pipe = CTFPipeline(VQModel(vq_preset("fmnist", **TINY_VQ)), ar=ar, aux=aux)
    drawn = _record_stage1(monkeypatch)
    samples = pipe.generate([0, 1, 2, 2, 1], seed=3, batch_size=2, temperature=1.5, stage2_temperature=3.0)
    truth = torch.cat(drawn).numpy()
    assert np.array_equal(stage1_labels(pipe, samples), truth)
    in_cluster = c2c[torch.as_tensor(samples.codes)].numpy() == truth
    by_hand = dataclasses.replace(samples, coarse=None)  # samples without their coarse labels
    if masked:
        assert in_cluster.all()
        assert np.array_equal(stage1_labels(pipe, by_hand), truth)
    else:  # a random unmasked head at a high temperature leaves the clusters: only Samples.coarse knows
        assert not in_cluster.all()
        with pytest.raises(CtfgenError, match="no coarse labels"):
            stage1_labels(pipe, by_hand)


def test_triplets_show_labels_coarse_and_final(folders):
    pipe = CTFPipeline.from_folders(tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"])
    samples = pipe.generate([0, 2, 1], seed=1)
    views = coarse_views(pipe, samples)
    N, H, W = 3, 16, 16
    assert views.label_maps.shape == views.coarse_images.shape == views.final_images.shape == (N, H, W, 3)
    assert np.array_equal(views.final_images[..., :1], samples.images)
    colors = cluster_colors(K)
    cell = H // GRID
    for n in range(N):
        for pos, label in enumerate(views.coarse_NL[n]):
            y, x = divmod(pos, GRID)
            block = views.label_maps[n, y * cell:(y + 1) * cell, x * cell:(x + 1) * cell]
            assert (block == colors[label]).all()
    reps = cluster_representatives(pipe.tokenizer.codebook(), pipe.models["aux"].code_to_coarse, K)
    expected = pipe.decode(reps[torch.as_tensor(views.coarse_NL)])
    assert np.array_equal(views.coarse_images[..., :1], expected)
    # decoding the representatives differs from decoding the sampled codes (stage 2 added detail)
    assert not np.array_equal(views.coarse_images, views.final_images)
    tiles = triplet_images(views)
    assert tiles.shape == (N, H, 3 * W + 2, 3)
    assert np.array_equal(tiles[:, :, 2 * W + 2:], views.final_images)
    base = BaselinePipeline.from_folders(tokenizer=folders["tokenizer"], baseline=folders["baseline"])
    with pytest.raises(CtfgenError, match="CTF pipeline"):
        coarse_views(base, base.generate([0]))


def test_cli_coarse_grid(folders, tmp_path, capsys):
    out = tmp_path / "coarse.png"
    args = ["sample", "--tokenizer", str(folders["tokenizer"]), "--per-class", "2", "--seed", "4", "--device",
            "cpu", "--no-progress", "--coarse-grid", str(out)]
    assert cli_main([*args, "--ar", str(folders["ar"]), "--aux", str(folders["aux"])]) == 0
    # 3 rows (classes) of 2 triplets 16 x (3 * 16 + 2), gaps of 6, scaled 2x
    assert Image.open(out).size == (2 * (6 + 2 * (50 + 6)), 2 * (6 + 3 * (16 + 6)))
    capsys.readouterr()
    assert cli_main([*args, "--baseline", str(folders["baseline"])]) == 2
    assert "--coarse-grid shows stage 1 and stage 2 of CTF" in capsys.readouterr().err
