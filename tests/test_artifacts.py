"""The artifact base: every kind saves and loads back the same content, fingerprint and parents;
a pipeline built in memory saves its component folders and loads back sampling the same codes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sample import CLASSES, GRID, K, TINY_VQ, VOCAB, make_folders, tiny_models

from ctfgen.artifacts import Artifact, ModuleArtifact
from ctfgen.cluster import CoarseMap
from ctfgen.codes import CodesConfig, CodeStore
from ctfgen.errors import ArtifactError, CtfgenError
from ctfgen.evaluate.classifier import ClassifierArtifact, ClassifierConfig, DomainClassifier
from ctfgen.models.artifact import TrainedModel
from ctfgen.sample import BaselinePipeline, CTFPipeline
from ctfgen.tokenizer import VQModel
from ctfgen.tokenizer.artifact import TokenizerArtifact
from ctfgen.tokenizer.model import vq_preset

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.mark.parametrize("kind", ["tokenizer", "ar", "aux", "baseline", "classifier"])
def test_module_artifacts_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "tokenizer":
        art: ModuleArtifact = TokenizerArtifact(VQModel(vq_preset("fmnist", **TINY_VQ)), made_from={"data": "d0"})
    elif kind == "classifier":
        art = ClassifierArtifact(DomainClassifier(ClassifierConfig(resolution=16, width=4)), made_from={"data": "d0"})
    else:
        art = TrainedModel(tiny_models()[kind], made_from={"tokenizer": "t0"})
    fp = art.fingerprint  # computed in memory, before any folder exists
    manifest = art.save(tmp_path / kind, info={"note": 1})
    assert art.fingerprint == fp == manifest["fingerprint"] and manifest["kind"] == art.KIND
    assert manifest["made_from"] == art.made_from and manifest["info"] == {"note": 1}
    assert set(manifest["files"]) == {art.WEIGHTS}
    back = type(art).load(tmp_path / kind)
    assert same_state(back.module, art.module) and not back.module.training
    assert back.fingerprint == fp and back.made_from == art.made_from
    assert back.fingerprint_of(back.state(), back.module) == fp  # the content still hashes to it
    with pytest.raises(ArtifactError, match="already exists"):
        art.save(tmp_path / kind)
    other = ClassifierArtifact if kind != "classifier" else TrainedModel
    with pytest.raises(ArtifactError, match=f"is a '{art.KIND}' artifact, expected {other.KIND}"):
        other.load(tmp_path / kind)


def test_trained_model_checks_kind_parents_and_ema(tmp_path):
    model = tiny_models()["ar"]
    TrainedModel(model, made_from={"tokenizer": "t0", "coarse_map": "c0"}).save(tmp_path / "ar")
    art = TrainedModel.load(tmp_path / "ar", expect_kind="ar", made_from={"coarse_map": "c0"})
    assert art.kind == "ar" and art.made_from == {"tokenizer": "t0", "coarse_map": "c0"} and same_state(art.module, model)
    assert not hasattr(art.module, "manifest")  # provenance is the artifact's, never stuck onto the module
    with pytest.raises(ArtifactError, match="holds a 'ar' model, expected 'aux'"):
        TrainedModel.load(tmp_path / "ar", expect_kind="aux")
    with pytest.raises(ArtifactError, match="coarse_map of model .* mismatch"):
        TrainedModel.load(tmp_path / "ar", made_from={"coarse_map": "c1"})
    with pytest.raises(ArtifactError, match="ema.safetensors not found .*kept no EMA"):
        TrainedModel.load(tmp_path / "ar", ema=True)


def test_coarse_map_round_trip(tmp_path):
    cmap = CoarseMap.from_labels(torch.arange(VOCAB) % K, k=K, method="modulo", seed=3, options={"a": 1},
                                 tokenizer_fingerprint="t0")
    assert isinstance(cmap, Artifact) and cmap.made_from == {"tokenizer": "t0"}
    cmap.save(tmp_path / "map")
    back = CoarseMap.load(tmp_path / "map")
    assert all(torch.equal(getattr(back, n), getattr(cmap, n)) for n in ("code_to_coarse", "members", "counts"))
    assert back.fingerprint == cmap.fingerprint == back.manifest["fingerprint"]
    assert back.config == cmap.config and back.config.options == {"a": 1} and back.made_from == cmap.made_from
    m = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert m["kind"] == "coarse_map" and m["config"] == {"k": K, "method": "modulo", "seed": 3, "options": {"a": 1}}
    m["config"]["colour"] = "red"
    (tmp_path / "map" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CtfgenError, match=r"manifest.json: config: unknown field\(s\) \['colour'\]"):
        CoarseMap.load(tmp_path / "map")


def test_code_store_round_trip_whole_or_in_blocks(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, VOCAB, size=(10, 2, GRID * GRID)).astype(np.uint16)
    labels = rng.integers(0, CLASSES, size=10)
    cfg = CodesConfig(grid=[GRID, GRID], vocab_size=VOCAB, num_classes=CLASSES, split="train", n_views=2, views="flip")
    whole = CodeStore.save(tmp_path / "whole", codes, labels, config=cfg, made_from={"tokenizer": "t0"},
                           extra_files={"note.txt": b"hi"})
    blocks = CodeStore.save(tmp_path / "blocks", (codes[:3], codes[3:]), labels, config=cfg,
                            made_from={"tokenizer": "t0"})
    for store in (whole, blocks, CodeStore.load(tmp_path / "whole")):
        assert np.array_equal(store.codes, codes) and np.array_equal(store.labels, labels)
        assert store.fingerprint == whole.fingerprint and store.made_from == {"tokenizer": "t0"}
        assert store.grid == (GRID, GRID) and store.n_views == 2 and len(store) == 10
    assert (tmp_path / "whole" / "note.txt").read_bytes() == b"hi"
    with pytest.raises(CtfgenError, match="3 rows of codes for 10 labels"):
        CodeStore.save(tmp_path / "short", [codes[:3]], labels, config=cfg, made_from={})
    assert not (tmp_path / "short").exists()


# ---------------------------------------------------------------- pipelines from memory

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("art"))


def test_pipeline_built_in_memory_saves_and_loads_back(folders, tmp_path):
    torch.manual_seed(1)
    tok = VQModel(vq_preset("fmnist", **TINY_VQ)).eval()
    models = tiny_models(2)
    ctf = CTFPipeline(tok, ar=models["ar"], aux=models["aux"])
    base = BaselinePipeline(tok, baseline=models["baseline"])
    for pipe, cls in ((ctf, CTFPipeline), (base, BaselinePipeline)):
        path = pipe.save_pretrained(tmp_path / pipe.type)
        back = cls.from_pretrained(path)
        want = pipe.generate([0, 2, 1], seed=4)
        got = back.generate([0, 2, 1], seed=4)
        assert np.array_equal(got.codes, want.codes) and np.array_equal(got.images, want.images)
        assert same_state(back.tokenizer, tok) and all(same_state(back.models[r], m) for r, m in pipe.models.items())
        m = json.loads((path / "manifest.json").read_text())
        assert m["info"]["copied"] and m["made_from"]["tokenizer"] == back.artifacts["tokenizer"].fingerprint
    # loaded from folders, then saved without them: the parents recorded in the folders are kept
    loaded = CTFPipeline.from_folders(tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"])
    loaded.folders = {}
    saved = loaded.save_pretrained(tmp_path / "again")
    for role in ("ar", "aux"):
        was = json.loads((folders[role] / "manifest.json").read_text())["made_from"]
        now = json.loads((saved / role / "manifest.json").read_text())["made_from"]
        assert now == was
    # a model of another tokenizer is refused, and nothing is written
    mixed = CTFPipeline(tok, ar=loaded.artifacts["ar"], aux=loaded.artifacts["aux"])
    with pytest.raises(ArtifactError, match="another tokenizer"):
        mixed.save_pretrained(tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


def test_pipeline_to_dtype_and_device(folders, tmp_path):
    pipe = CTFPipeline.from_folders(tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"])
    fp32 = {k: v.clone() for k, v in pipe.models["ar"].state_dict().items()}
    assert pipe.to(dtype=torch.bfloat16) is pipe
    assert all(p.dtype == torch.bfloat16 for m in pipe.models.values() for p in m.parameters())
    assert all(p.dtype == torch.float32 for p in pipe.tokenizer.parameters())  # decoding stays in float32
    assert pipe.generate([1, 2], seed=0).codes.shape == (2, GRID * GRID)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    pipe.to(dtype=torch.float32)
    rounded = pipe.models["ar"].state_dict()
    assert all(torch.equal(rounded[k], v.bfloat16().float() if v.is_floating_point() else v) for k, v in fp32.items())
    pipe.folders = {}
    saved = pipe.to(dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    back = CTFPipeline.from_pretrained(saved, dtype=torch.bfloat16)
    assert all(same_state(back.models[r], m) for r, m in pipe.models.items())
    assert np.array_equal(back.generate([1, 0], seed=3).codes, pipe.generate([1, 0], seed=3).codes)


@pytest.mark.parametrize("release", sorted(p.name for p in FIXTURES.glob("release-*")))
def test_release_modules_saved_from_memory_sample_what_that_release_sampled(release, tmp_path):
    from ctfgen.sample import load_pipeline

    old = tmp_path / release
    shutil.copytree(FIXTURES / release, old)
    expected = np.load(old / "expected.npz")
    for name, cls in (("ctf", CTFPipeline), ("baseline", BaselinePipeline)):
        loaded = load_pipeline(old / f"pipeline-{name}")
        rebuilt = cls(loaded.artifacts["tokenizer"], models={r: loaded.artifacts[r] for r in loaded.models},
                      sampling=loaded.sampling)
        rebuilt.folders = {}  # saved from memory: written from the modules, with the artifacts' parents
        back = load_pipeline(rebuilt.save_pretrained(tmp_path / name))
        np.testing.assert_array_equal(back.generate(expected["labels"].tolist(), seed=0).codes, expected[f"{name}_codes"])
        for role in loaded.models:  # the parents the old folders recorded are kept
            was = json.loads((old / f"pipeline-{name}" / role / "manifest.json").read_text())
            now = json.loads((tmp_path / name / role / "manifest.json").read_text())
            assert now["made_from"] == was["made_from"] and now["fingerprint"] == was["fingerprint"]
