"""Broken or altered files are caught by name: every artifact records the size and SHA-256 of its
weights files when written, and loading checks them (train resume, sample, pipeline make, tokenizer,
coarse map, classifier, codes). Folders written before the records existed still load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sample import folders  # noqa: F401  (fixture)
from test_train import cfg, make_coarse, make_codes, run_train

from ctfgen.apps.cli import main as cli_main
from ctfgen.artifacts import file_sha256
from ctfgen.errors import ArtifactError
from ctfgen.models.artifact import TrainedModel


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: same size, other values
    path.write_bytes(bytes(data))


def drop_file_records(folder: Path) -> None:
    """Make a folder look as the previous release wrote it: no "files" in the manifest."""
    m = json.loads((folder / "manifest.json").read_text())
    del m["files"]
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    inputs = {"codes": make_codes(root / "codes"), "coarse": make_coarse(root / "coarse")}
    run_train(inputs, root / "run", cfg(steps=4), stop_after=2)  # a run to resume
    return inputs, root / "run"


def copy(folder: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(folder, to)
    return to


def test_every_weights_file_is_recorded(run):
    _, out = run
    m = json.loads((out / "manifest.json").read_text())
    names = {"model.safetensors", "ema.safetensors", "training_state/optimizer.safetensors",
             "training_state/rng.safetensors"}
    assert set(m["files"]) == names
    for name in names:
        assert m["files"][name] == {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}


@pytest.mark.parametrize("damage, match", [(truncate, "is .* bytes but .* records .*: the file is truncated"),
                                           (flip_byte, "does not match the file fingerprint")])
def test_damaged_model_is_refused_by_name_when_loading_and_resuming(run, tmp_path, damage, match):
    inputs, out = run
    bad = copy(out, tmp_path / "run")
    damage(bad / "ema.safetensors")
    with pytest.raises(ArtifactError, match=f"{bad / 'ema.safetensors'} {match}"):
        TrainedModel.load(bad)
    with pytest.raises(ArtifactError, match=f"{bad / 'ema.safetensors'} {match}.*cannot be resumed"):
        run_train(inputs, bad, cfg(steps=4))


def test_check_modes_and_files_of_the_previous_release(run, tmp_path, monkeypatch):
    _, out = run
    bad = copy(out, tmp_path / "run")
    flip_byte(bad / "model.safetensors")
    monkeypatch.setenv("CTFGEN_CHECK_FILES", "size")  # size only: the same size passes
    TrainedModel.load(bad, ema=False)
    truncate(bad / "model.safetensors")
    with pytest.raises(ArtifactError, match="truncated"):
        TrainedModel.load(bad, ema=False)
    monkeypatch.setenv("CTFGEN_CHECK_FILES", "off")  # no check: still an error naming the file, not a traceback
    with pytest.raises(ArtifactError, match=f"cannot read {bad / 'model.safetensors'} .*damaged"):
        TrainedModel.load(bad, ema=False)
    monkeypatch.setenv("CTFGEN_CHECK_FILES", "quick")
    with pytest.raises(ArtifactError, match="CTFGEN_CHECK_FILES='quick'"):
        TrainedModel.load(out)
    monkeypatch.delenv("CTFGEN_CHECK_FILES")
    old = copy(out, tmp_path / "old")
    drop_file_records(old)
    TrainedModel.load(old)  # no records: loads unchecked
    truncate(old / "model.safetensors")
    with pytest.raises(ArtifactError, match=f"cannot read {old / 'model.safetensors'}"):
        TrainedModel.load(old, ema=False)


def test_pipeline_make_and_sample_refuse_a_truncated_model(folders, tmp_path, capsys):  # noqa: F811
    base = copy(folders["baseline"], tmp_path / "baseline")
    truncate(base / "model.safetensors")
    pipe = tmp_path / "pipe"
    argv = ["pipeline", "make", "--out", str(pipe), "--tokenizer", str(folders["tokenizer"]), "--baseline", str(base)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"{base / 'model.safetensors'} is " in err and "truncated" in err and len(err.strip().splitlines()) == 1
    assert not pipe.exists()
    assert cli_main(["sample", "--tokenizer", str(folders["tokenizer"]), "--baseline", str(base), "--per-class", "1",
                     "--device", "cpu", "--no-progress", "--npz", str(tmp_path / "s.npz")]) == 2
    assert "truncated" in capsys.readouterr().err
    # a pipeline made from a good folder whose copy is damaged afterwards
    assert cli_main(["pipeline", "make", "--out", str(pipe), "--tokenizer", str(folders["tokenizer"]),
                     "--baseline", str(folders["baseline"])]) == 0
    truncate(pipe / "baseline" / "model.safetensors")
    assert cli_main(["sample", "--pipeline", str(pipe), "--per-class", "1", "--device", "cpu", "--no-progress",
                     "--npz", str(tmp_path / "s.npz")]) == 2
    assert str(pipe / "baseline" / "model.safetensors") in capsys.readouterr().err


def test_tokenizer_coarse_map_codes_and_classifier_are_checked(folders, tmp_path):  # noqa: F811
    from ctfgen.cluster import CoarseMap, load_codebook
    from ctfgen.codes import CodeStore
    from ctfgen.evaluate.classifier import (ClassifierConfig, ClassifierTrainConfig, DomainClassifier,
                                            ClassifierArtifact, save_classifier)
    from ctfgen.tokenizer import load_tokenizer

    tok = copy(folders["tokenizer"], tmp_path / "tok")
    truncate(tok / "model.safetensors")
    for load in (load_tokenizer, load_codebook):
        with pytest.raises(ArtifactError, match=f"{tok / 'model.safetensors'} is .*truncated"):
            load(tok)
    cmap = copy(folders["root"] / "coarse", tmp_path / "coarse")
    truncate(cmap / "coarse_map.safetensors")
    with pytest.raises(ArtifactError, match="coarse_map.safetensors is .*truncated.*ctfgen cluster"):
        CoarseMap.load(cmap)
    codes = make_codes(tmp_path / "codes")
    CodeStore.open(codes)
    flip_byte(codes / "codes.npy")
    with pytest.raises(ArtifactError, match="codes.npy does not match the file fingerprint.*ctfgen encode"):
        CodeStore.open(codes)
    save_classifier(DomainClassifier(ClassifierConfig(resolution=8, width=4)), tmp_path / "clf",
                    train_cfg=ClassifierTrainConfig(), data={}, info={})
    ClassifierArtifact.load(tmp_path / "clf")
    truncate(tmp_path / "clf" / "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors is .*truncated.*train the classifier again"):
        ClassifierArtifact.load(tmp_path / "clf")


def test_nan_weights_written_by_an_older_release_are_refused(run, tmp_path):
    from safetensors.torch import load_file, save_file

    _, out = run
    old = copy(out, tmp_path / "old")
    drop_file_records(old)
    state = load_file(str(old / "ema.safetensors"))
    next(iter(state.values())).fill_(float("nan"))
    save_file(state, str(old / "ema.safetensors"))
    with pytest.raises(ArtifactError, match="NaN or infinite values.*diverged run"):
        TrainedModel.load(old)


def test_hashing_is_cached_per_file_version(tmp_path, monkeypatch):
    from ctfgen import filecheck
    from ctfgen.artifacts import write_manifest

    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", np.arange(10))
    m = write_manifest(tmp_path / "a", kind="t", fingerprint="f")
    calls = []
    monkeypatch.setattr(filecheck, "sha256_file", lambda p: calls.append(p) or file_sha256(p))
    filecheck.verify_file(tmp_path / "a", m, "x.npy")
    assert calls == []  # hashed when written, in this process
    np.save(tmp_path / "a" / "x.npy", np.arange(10) + 1)  # same size, new content
    with pytest.raises(ArtifactError, match="x.npy does not match"):
        filecheck.verify_file(tmp_path / "a", m, "x.npy")
    assert len(calls) == 1


def test_what_is_recorded_follows_the_check_mode(tmp_path, monkeypatch):
    from ctfgen.artifacts import write_manifest

    expect = {"hash": {"bytes", "sha256"}, "size": {"bytes"}}
    for mode in ("hash", "size", "off"):
        monkeypatch.setenv("CTFGEN_CHECK_FILES", mode)
        (tmp_path / mode / "sub").mkdir(parents=True)
        np.save(tmp_path / mode / "sub" / "x.npy", np.arange(3))
        (tmp_path / mode / "notes.txt").write_text("not checked")
        files = write_manifest(tmp_path / mode, kind="t", fingerprint="f")["files"]
        assert {k: set(v) for k, v in files.items()} == ({"sub/x.npy": expect[mode]} if mode != "off" else {})


def test_a_truncated_lpips_weights_file_is_named(tmp_path):
    from safetensors.torch import save_file

    from ctfgen.tokenizer.lpips import LPIPS

    path = tmp_path / "vgg.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    truncate(path)
    with pytest.raises(ArtifactError, match=f"cannot read LPIPS weights {path} .*damaged"):
        LPIPS.from_files(str(path), None)
