"""Sharing pipelines like the rest of the field: the model card save_pretrained writes (Hub front
matter, provenance, metrics measured by `ctfgen eval` with their command) and loading a pipeline by
Hub repository id from a Hugging Face cache laid out by the test (no network)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants

from test_sample import CLASSES, ctf, folders  # noqa: F401  (fixtures)

from ctfgen.apps.cli import main as cli_main
from ctfgen.errors import ArtifactError, CtfgenError
from ctfgen.evaluate.classifier import ClassifierConfig, DomainClassifier, ClassifierTrainConfig, save_classifier
from ctfgen.sample import BaselinePipeline, CTFPipeline, load_pipeline, make_pipeline
from ctfgen.sample.model_card import PIPELINE_TAG

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's name in the cache is its commit hash


def front_matter(card: Path) -> dict:
    text = card.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# ---------------------------------------------------------------- the card

def test_card_front_matter_matches_the_manifests(ctf, folders, tmp_path):
    out = ctf.save_pretrained(tmp_path / "pipe-ctf", license="mit")
    meta = front_matter(out / "README.md")
    assert meta["library_name"] == "ctfgen" and meta["pipeline_tag"] == PIPELINE_TAG
    assert meta["license"] == "mit" and "class-conditional" in meta["tags"]
    assert "model-index" not in meta  # nothing measured, nothing shown
    pm = manifest(out)
    section = meta["ctfgen"]
    assert section["type"] == "ctf" and section["fingerprint"] == pm["fingerprint"]
    ar = manifest(folders["ar"])
    assert section["made_from"] == {**pm["made_from"], "codes": ar["made_from"]["codes"]}
    for role in ("tokenizer", "ar", "aux"):
        m = manifest(out / role)
        assert section["components"][role] == {"fingerprint": m["fingerprint"], "made_from": m["made_from"]}
    assert section["made_from"]["coarse_map"] == ar["made_from"]["coarse_map"]
    # huggingface_hub reads it back as the Hub would
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "ctfgen" and "## How it was made" in card.text
    assert "No metrics yet" in card.text
    assert "stage 2 predicts every token's code from the whole coarse map in one pass" in card.text

    base = make_pipeline(tmp_path / "pipe-base", tokenizer=folders["tokenizer"], baseline=folders["baseline"])
    meta = front_matter(base / "README.md")
    assert "license" not in meta and meta["ctfgen"]["type"] == "baseline"
    assert set(meta["ctfgen"]["components"]) == {"tokenizer", "baseline"}
    assert "coarse_map" not in meta["ctfgen"]["made_from"]


def test_card_quotes_measured_metrics_with_their_command(ctf, folders, tmp_path, capsys):
    pipe = ctf.save_pretrained(tmp_path / "pipe")
    base = make_pipeline(tmp_path / "base", tokenizer=folders["tokenizer"], baseline=folders["baseline"])
    torch.manual_seed(0)
    save_classifier(DomainClassifier(ClassifierConfig(resolution=16, num_classes=CLASSES, width=4)).eval(),
                    tmp_path / "clf", train_cfg=ClassifierTrainConfig(), data={"train": {"fingerprint": "d"}},
                    info={"test_accuracy": 0.3})  # a weak classifier: the card repeats eval's warning
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8))
    results = {}
    for name, folder in (("ctf", pipe), ("base", base)):
        sample = ["sample", "--pipeline", str(folder), "--per-class", "4", "--seed", "3", "--device", "cpu",
                  "--no-progress", "--png-dir", str(tmp_path / f"s-{name}")]
        assert cli_main(sample) == 0
        argv = ["eval", str(tmp_path / f"s-{name}"), "--ref", str(tmp_path / "ref.npz"), "--classifier",
                str(tmp_path / "clf"), "--inception", "none", "--cache", "none", "--quiet",
                "--out", str(tmp_path / f"e-{name}.json")]
        assert cli_main(argv) == 0
        results[name] = json.loads((tmp_path / f"e-{name}.json").read_text())
        assert results[name]["command"] == "ctfgen " + " ".join(argv)
        assert results[name]["metadata"]["sampling"]["command"] == "ctfgen " + " ".join(sample)
    capsys.readouterr()
    assert cli_main(["pipeline", "card", str(pipe), "--eval", str(tmp_path / "e-ctf.json"), "--license", "mit"]) == 0
    meta = front_matter(pipe / "README.md")
    measured = {k: v for k, v in results["ctf"]["metrics"].items() if k != "pr_k"}
    got = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert got == measured and meta["license"] == "mit"
    assert meta["ctfgen"]["evaluations"][0]["command"] == results["ctf"]["command"]
    text = (pipe / "README.md").read_text()
    assert results["ctf"]["command"] in text and results["ctf"]["metadata"]["sampling"]["command"] in text
    assert results["ctf"]["warnings"]
    assert all(f"Warning from `ctfgen eval`: {w}" in text for w in results["ctf"]["warnings"])
    CTFPipeline.from_pretrained(pipe)  # only README.md changed: the folder still loads
    # another pipeline's samples, or a result that cannot say which models made them: refused, card unchanged
    before = (pipe / "README.md").read_bytes()
    assert cli_main(["pipeline", "card", str(pipe), "--eval", str(tmp_path / "e-base.json")]) == 2
    assert "belong on another pipeline's card" in capsys.readouterr().err
    anonymous = {**results["ctf"], "metadata": {}}
    (tmp_path / "anon.json").write_text(json.dumps(anonymous))
    with pytest.raises(ArtifactError, match="record no model fingerprints"):
        ctf.save_pretrained(tmp_path / "p2", evaluations=[tmp_path / "anon.json"])
    assert not (tmp_path / "p2").exists() and (pipe / "README.md").read_bytes() == before
    (tmp_path / "nocmd.json").write_text(json.dumps({k: v for k, v in results["ctf"].items() if k != "command"}))
    with pytest.raises(CtfgenError, match="records no 'command'"):
        ctf.save_pretrained(tmp_path / "p3", evaluations=[tmp_path / "nocmd.json"])


# ---------------------------------------------------------------- loading from the Hugging Face cache

def lay_out_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """What `hf download repo_id` leaves: blobs named by content hash, a snapshot of relative symlinks
    to them named by the commit, and refs/main naming that commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once when huggingface_hub was imported
    return cache


def test_from_pretrained_loads_a_repo_id_from_the_cache(ctf, folders, tmp_path, hub_cache, monkeypatch):
    saved = ctf.save_pretrained(tmp_path / "pipe")
    snapshot = lay_out_cache(hub_cache, "someone/tiny-ctf", saved)
    want = ctf.generate([0, 1, 2, 2], seed=7)
    for loaded in (CTFPipeline.from_pretrained("someone/tiny-ctf"), load_pipeline("someone/tiny-ctf")):
        got = loaded.generate([0, 1, 2, 2], seed=7)
        assert np.array_equal(got.codes, want.codes) and np.array_equal(got.images, want.images)
        assert loaded.folders["tokenizer"] == snapshot / "tokenizer"
    # the command line, in a fresh process that finds the cache through HF_HUB_CACHE alone
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "ctfgen", "sample", "--pipeline", "someone/tiny-ctf", "--classes",
                           "0,1", "--per-class", "2", "--seed", "7", "--device", "cpu", "--no-progress",
                           "--npz", str(tmp_path / "s.npz")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "s.npz") as z:
        grey = ctf.generate([0, 0, 1, 1], seed=7).images
        assert np.array_equal(z["arr_0"], np.repeat(grey, 3, axis=-1))


def test_repo_id_errors_and_local_folders_first(ctf, folders, tmp_path, hub_cache, monkeypatch):
    with pytest.raises(CtfgenError) as e:
        CTFPipeline.from_pretrained("someone/not-fetched")
    msg = str(e.value)
    assert "'someone/not-fetched'" in msg and str(hub_cache) in msg and "hf download someone/not-fetched" in msg
    # a local folder with a repo id's spelling wins over the cache
    lay_out_cache(hub_cache, "someone/tiny", ctf.save_pretrained(tmp_path / "ctf"))
    monkeypatch.chdir(tmp_path)
    make_pipeline(tmp_path / "someone" / "tiny", tokenizer=folders["tokenizer"], baseline=folders["baseline"])
    assert isinstance(load_pipeline("someone/tiny"), BaselinePipeline)
    shutil.rmtree(tmp_path / "someone")
    assert isinstance(load_pipeline("someone/tiny"), CTFPipeline)
    # a pipeline that references folders by path cannot travel
    lay_out_cache(hub_cache, "someone/by-reference", ctf.save_pretrained(tmp_path / "ref", copy=False))
    with pytest.raises(ArtifactError, match="references to component folders"):
        load_pipeline("someone/by-reference")


RELEASE = ROOT / "tests" / "fixtures" / "release-0.1.0"


@pytest.mark.parametrize("rule, how", [
    ("uniform", "uniformly at random among the members"),
    ("frequency", "among the members of its coarse cluster in proportion to its count in the training codes plus 1")])
def test_card_of_a_prior_pipeline_says_what_its_stage2_is(tmp_path, rule, how):
    """A pipeline whose stage 2 is a parameter-free prior (`pipeline make --stage2 RULE`) is described
    by that stage 2 (its class's `describe`, read from the stage-2 folder), not as a learned one."""
    train = ["--train-codes", RELEASE / "codes"] if rule == "frequency" else []
    assert cli_main([str(a) for a in ["pipeline", "make", "--tokenizer", RELEASE / "tokenizer", "--ar",
                                      RELEASE / "stage1", "--stage2", rule, "--coarse-map", RELEASE / "coarse",
                                      *train, "--out", tmp_path / "pipe", "--reference"]]) == 0
    text = ModelCard.load(tmp_path / "pipe" / "README.md").text
    assert "whole coarse map" not in text
    assert f"stage 2, parameter-free, draws each token's code {how}" in text and f'the "{rule}" prior' in text
    # its row in the components' table: nothing was trained, which is not "not recorded"
    row = next(line for line in text.splitlines() if line.startswith("| stage 2 "))
    assert row.endswith("| none (parameter-free) |"), row
    assert "A class-conditional image generator made with ctfgen: 16x16 grey images of 3 classes, each made of " \
           "4x4 tokens (a codebook of 64 codes)" in text
