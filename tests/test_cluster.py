"""Coarse-label maps: clustering methods, the CoarseMap artifact and `ctfgen cluster`."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ctfgen.apps.cli import main
from ctfgen.artifacts import write_manifest
from ctfgen.cluster import METHODS, CoarseMap, build_coarse_map, cluster_codebook, load_codebook
from ctfgen.errors import ArtifactError, CtfgenError

FAST = settings(max_examples=20, deadline=None)


def blobs(n_codes: int = 96, dim: int = 4, n_blobs: int = 6, seed: int = 0) -> torch.Tensor:
    """Codewords in well-separated groups, so a sensible clustering is easy to recognise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_blobs, dim, generator=g) * 5
    return centres[torch.arange(n_codes) % n_blobs] + 0.1 * torch.randn(n_codes, dim, generator=g)


def fake_tokenizer(folder, codebook: torch.Tensor, fingerprint: str = "tok0123456789abc"):
    folder.mkdir(parents=True)
    save_file({"quantize.embedding.weight": codebook.contiguous(), "decoder.x": torch.zeros(2)}, str(folder / "model.safetensors"))
    write_manifest(folder, kind="tokenizer", fingerprint=fingerprint)
    return folder


def check_partition(labels: torch.Tensor, n_codes: int, k: int) -> torch.Tensor:
    assert labels.dtype == torch.long and labels.shape == (n_codes,)
    assert int(labels.min()) >= 0 and int(labels.max()) < k
    counts = torch.bincount(labels, minlength=k)
    assert bool((counts > 0).all()), f"empty cluster(s): {torch.nonzero(counts == 0).flatten().tolist()}"
    return counts


# ------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_full_partition(method):
    counts = check_partition(cluster_codebook(blobs(), 12, method=method, seed=1), 96, 12)
    assert int(counts.sum()) == 96


@pytest.mark.parametrize("method", ["kmeans", "agglomerative", "average"])
def test_centroid_and_neighbourhood_methods_recover_separated_groups(method):
    cb = blobs(n_codes=60, n_blobs=6)
    labels = cluster_codebook(cb, 6, method=method, normalize=False)
    truth = torch.arange(60) % 6
    # Same partition up to renaming: each true group maps to exactly one label.
    pairs = {(int(t), int(l)) for t, l in zip(truth, labels)}
    assert len(pairs) == 6


@pytest.mark.parametrize("method", ["balanced", "random"])
@FAST
@given(n_codes=st.integers(4, 120), k_frac=st.floats(0.0, 1.0), seed=st.integers(0, 3))
def test_equal_size_methods_are_balanced(method, n_codes, k_frac, seed):
    k = 2 + int(k_frac * (n_codes - 2))
    cb = torch.randn(n_codes, 3, generator=torch.Generator().manual_seed(seed))
    counts = check_partition(cluster_codebook(cb, k, method=method, seed=seed), n_codes, k)
    assert int(counts.max() - counts.min()) <= 1
    if n_codes % k == 0:
        assert bool((counts == n_codes // k).all())


@pytest.mark.parametrize("method", METHODS)
@FAST
@given(n_distinct=st.integers(1, 8), n_codes=st.integers(8, 40), k=st.integers(2, 8), seed=st.integers(0, 5))
def test_no_empty_clusters_with_duplicate_codewords(method, n_distinct, n_codes, k, seed):
    # A trained codebook can hold identical (dead) vectors, even fewer distinct ones than K.
    g = torch.Generator().manual_seed(seed)
    distinct = torch.randn(n_distinct, 3, generator=g)
    cb = distinct[torch.randint(0, n_distinct, (n_codes,), generator=g)]
    cb[: n_codes // 4] = 0.0  # never-trained codes left at zero
    labels = cluster_codebook(cb, k, method=method, seed=seed)
    check_partition(labels, n_codes, k)
    assert torch.equal(labels, cluster_codebook(cb, k, method=method, seed=seed))


@pytest.mark.parametrize("method", ["kmeans", "agglomerative", "average"])
def test_identical_codewords_share_a_label_when_there_is_room(method):
    cb = blobs(n_codes=40, n_blobs=4)
    cb[10:20] = cb[10]  # ten copies of one vector
    labels = cluster_codebook(cb, 4, method=method)
    assert len(set(labels[10:20].tolist())) == 1


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method):
    cb = torch.randn(80, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(cluster_codebook(cb, 8, method=method, seed=5), cluster_codebook(cb, 8, method=method, seed=5))


def test_random_grouping_changes_with_the_seed():
    cb = torch.randn(80, 4)
    assert not torch.equal(cluster_codebook(cb, 8, method="random", seed=0), cluster_codebook(cb, 8, method="random", seed=1))


def test_labels_are_canonical_and_raw_option_is_honoured():
    cb = blobs(n_codes=48, n_blobs=4)
    labels = cluster_codebook(cb, 4, method="kmeans")
    firsts = [int(torch.nonzero(labels == c)[0]) for c in range(4)]
    assert firsts == sorted(firsts)  # cluster ids ordered by their first code
    # Two groups that differ only in length: only raw clustering can separate them.
    direction = torch.randn(1, 4)
    scaled = torch.cat([direction.repeat(10, 1), 10 * direction.repeat(10, 1)]) + 0.001 * torch.randn(20, 4)
    assert len(set(cluster_codebook(scaled, 2, normalize=False)[:10].tolist())) == 1
    assert cluster_codebook(scaled, 2, normalize=False)[0] != cluster_codebook(scaled, 2, normalize=False)[-1]


@pytest.mark.parametrize("k", [1, 0, -3, 97])
def test_bad_k_is_refused(k):
    with pytest.raises(CtfgenError, match="K must be between 2 and the codebook size 96"):
        cluster_codebook(blobs(), k)


def test_bad_method_options_and_codebooks_are_refused():
    with pytest.raises(CtfgenError, match="unknown clustering method 'dbscan'"):
        cluster_codebook(blobs(), 4, method="dbscan")
    with pytest.raises(CtfgenError, match=r"unknown option\(s\) \['linkage'\] for method 'kmeans'"):
        cluster_codebook(blobs(), 4, linkage="ward")
    with pytest.raises(CtfgenError, match="NaN"):
        cluster_codebook(torch.full((8, 2), float("nan")), 2)
    with pytest.raises(CtfgenError, match=r"\(V, D\) matrix"):
        cluster_codebook(torch.zeros(8), 2)


# ------------------------------------------------------------------ CoarseMap


@FAST
@given(labels=st.lists(st.integers(0, 5), min_size=2, max_size=60))
def test_member_table_matches_the_map(labels):
    k = max(labels) + 1
    if k < 2 or len(set(labels)) != k:
        with pytest.raises(CtfgenError):
            CoarseMap.from_labels(labels, k=k)
        return
    cmap = CoarseMap.from_labels(labels, k=k)
    assert cmap.members.shape == (k, int(cmap.counts.max()))
    assert torch.equal(cmap.counts, torch.bincount(torch.tensor(labels), minlength=k))
    seen = []
    for c in range(k):
        row = cmap.members[c]
        real = row[row >= 0]
        assert len(real) == int(cmap.counts[c]) and bool((row[len(real) :] == -1).all())
        assert bool((cmap.code_to_coarse[real] == c).all()) and torch.equal(real, real.sort().values)
        seen += real.tolist()
    assert sorted(seen) == list(range(len(labels)))  # every code in exactly one cluster
    assert torch.equal(cmap.member_mask().sum(0), torch.ones(len(labels), dtype=torch.long))


def test_random_member_stays_in_its_cluster():
    cmap = build_coarse_map(blobs(), 6, method="kmeans")
    coarse = torch.randint(0, 6, (4, 50))
    drawn = cmap.random_member(coarse, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == coarse.shape and torch.equal(cmap.coarse_of(drawn), coarse)


def test_save_load_round_trip(tmp_path):
    cmap = build_coarse_map(blobs(), 6, method="balanced", seed=3, tokenizer_fingerprint="tokA")
    cmap.save(tmp_path / "map")
    back = CoarseMap.load(tmp_path / "map")
    for name in ("code_to_coarse", "members", "counts"):
        assert torch.equal(getattr(back, name), getattr(cmap, name))
    assert (back.k, back.method, back.seed, back.tokenizer_fingerprint) == (6, "balanced", 3, "tokA")
    assert back.options == {"normalize": True, "max_iter": 20} and back.fingerprint == cmap.fingerprint
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["kind"] == "coarse_map" and manifest["made_from"] == {"tokenizer": "tokA"}
    with pytest.raises(ArtifactError, match="already exists"):
        cmap.save(tmp_path / "map")
    cmap.save(tmp_path / "map", overwrite=True)


def test_fingerprint_tracks_content():
    a = CoarseMap.from_labels([0, 1, 0, 1], method="kmeans")
    assert a.fingerprint == CoarseMap.from_labels([0, 1, 0, 1], method="kmeans", seed=9).fingerprint
    assert a.fingerprint != CoarseMap.from_labels([0, 1, 1, 0], method="kmeans").fingerprint
    assert a.fingerprint != CoarseMap.from_labels([0, 1, 0, 1], method="random").fingerprint


def test_tokenizer_mismatch_names_both_fingerprints():
    cmap = CoarseMap.from_labels([0, 1, 1], tokenizer_fingerprint="aaaa1111")
    cmap.check_tokenizer("aaaa1111")
    with pytest.raises(ArtifactError, match="aaaa1111.*bbbb2222"):
        cmap.check_tokenizer("bbbb2222")


def test_damaged_or_wrong_artifacts_are_refused(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    cmap = CoarseMap.from_labels([0, 1, 1, 0, 2], tokenizer_fingerprint="t")
    cmap.save(tmp_path / "map")
    tensors = load_file(str(tmp_path / "map" / "coarse_map.safetensors"))
    tensors["counts"] = torch.tensor([1, 1, 3])
    save_file(tensors, str(tmp_path / "map" / "coarse_map.safetensors"))
    with pytest.raises(ArtifactError, match="coarse_map.safetensors does not match the file fingerprint"):
        CoarseMap.load(tmp_path / "map")
    monkeypatch.setenv("CTFGEN_CHECK_FILES", "off")  # the content checks behind the file hash still hold
    with pytest.raises(ArtifactError, match="'counts' does not match"):
        CoarseMap.load(tmp_path / "map")
    monkeypatch.delenv("CTFGEN_CHECK_FILES")
    tok = fake_tokenizer(tmp_path / "tok", torch.randn(8, 2))
    with pytest.raises(ArtifactError, match="'tokenizer' artifact, expected coarse_map"):
        CoarseMap.load(tok)
    with pytest.raises(ArtifactError, match="not found"):
        CoarseMap.load(tmp_path / "nothing")


def test_load_codebook(tmp_path):
    cb = torch.randn(16, 3)
    codebook, fp = load_codebook(fake_tokenizer(tmp_path / "tok", cb, fingerprint="fp42"))
    assert torch.equal(codebook, cb) and fp == "fp42"
    (tmp_path / "bad").mkdir()
    save_file({"other": cb}, str(tmp_path / "bad" / "model.safetensors"))
    write_manifest(tmp_path / "bad", kind="tokenizer", fingerprint="x")
    with pytest.raises(ArtifactError, match="quantize.embedding.weight"):
        load_codebook(tmp_path / "bad")


# ------------------------------------------------------------------ CLI


def test_cli_cluster(tmp_path, capsys):
    tok = fake_tokenizer(tmp_path / "tok", blobs(n_codes=64), fingerprint="tokfp")
    out = tmp_path / "map"
    argv = ["cluster", "--tokenizer", str(tok), "--k", "8", "--method", "balanced", "--seed", "2", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "K=8 method=balanced" in text and "min 8  mean 8.0  max 8" in text and str(out) in text
    cmap = CoarseMap.load(out)
    assert cmap.k == 8 and cmap.tokenizer_fingerprint == "tokfp" and cmap.seed == 2

    assert main(argv) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--raw", "--max-iter", "3"]) == 0
    assert CoarseMap.load(out).options == {"normalize": False, "max_iter": 3}

    agg = ["cluster", "--tokenizer", str(tok), "--k", "4", "--method", "agglomerative", "--neighbors", "3", "--out", str(tmp_path / "agg")]
    assert main(agg) == 0 and CoarseMap.load(tmp_path / "agg").options["n_neighbors"] == 3


def test_cli_errors_are_one_line(tmp_path, capsys):
    tok = fake_tokenizer(tmp_path / "tok", torch.randn(16, 3))
    assert main(["cluster", "--tokenizer", str(tok), "--k", "17", "--out", str(tmp_path / "m")]) == 2
    assert "K must be between 2 and the codebook size 16" in capsys.readouterr().err
    assert main(["cluster", "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert "artifact folder not found" in capsys.readouterr().err
    assert main(["cluster", "--tokenizer", str(tok), "--k", "4", "--linkage", "ward", "--out", str(tmp_path / "m")]) == 2
    assert "--linkage applies to the agglomerative method" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cli_default_k_keeps_the_papers_codes_per_cluster(tmp_path, capsys):
    """K defaults to V / 32 (16384 codes / 512 labels in the paper), said in --help: was 512 whatever V."""
    tok = fake_tokenizer(tmp_path / "tok", blobs(n_codes=256), fingerprint="tokfp")
    assert main(["cluster", "--tokenizer", str(tok), "--out", str(tmp_path / "map")]) == 0
    assert "K=8 (codebook size / 32)" in capsys.readouterr().out
    assert CoarseMap.load(tmp_path / "map").k == 8
    with pytest.raises(SystemExit):
        main(["cluster", "--help"])
    assert "codebook size / 32" in " ".join(capsys.readouterr().out.split())
