"""An EMA cannot mislead: its decay is warmed up, the run records how far it moved, the loader
takes it by default only when it moved far enough (and says which weights it loaded), and a run
that ends with an EMA that barely moved warns. The case: 100 steps at --ema 0.9999 on codes that a
model learns fast (4 codes, each position's code fixed by the class)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfgen.artifacts import fingerprint_tensors, write_manifest

VOCAB, GRID, CLASSES = 4, 4, 3
MODEL = dict(n_layer=1, n_head=2, dim=32, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0,
             class_dropout_prob=0.0)


def learnable_codes(folder: Path, n: int = 96) -> Path:
    """Code (label + position) mod 4: a model that reads class and position predicts it exactly."""
    folder.mkdir(parents=True)
    labels = np.arange(n) % CLASSES
    codes = ((labels[:, None] + np.arange(GRID * GRID)[None, :]) % VOCAB)[:, None, :].astype(np.uint16)
    np.save(folder / "codes.npy", codes)
    np.save(folder / "labels.npy", labels.astype(np.int64))
    write_manifest(folder, kind="codes", fingerprint=fingerprint_tensors({"codes": codes, "labels": labels}),
                   config={"grid": [GRID, GRID], "vocab_size": VOCAB, "num_classes": CLASSES, "views": 1,
                           "split": "train"},
                   made_from={"tokenizer": "tok0", "data": "data0"})
    return folder


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return learnable_codes(tmp_path_factory.mktemp("ema") / "codes")


def train_100_steps(codes: Path, out: Path):
    from ctfgen.train import RunOptions, TrainConfig, train

    cfg = TrainConfig(kind="baseline", preset="tiny", steps=100, batch_size=16, lr=1e-2, ema=0.9999, seed=0,
                      model_overrides=MODEL)
    return train(cfg, codes_dir=codes, out_dir=out, run=RunOptions(device="cpu", progress=False, log_every=50))


def nats_per_token(model, codes: Path) -> float:
    from ctfgen.codes import CodeStore
    from ctfgen.evaluate.nll import heldout_nll

    store = CodeStore.open(codes)
    fine_NL = torch.from_numpy(store.codes[:, 0].astype(np.int64))
    out = heldout_nll({"baseline": model}, fine_NL, torch.from_numpy(store.labels))
    return out["nats_per_image"] / out["tokens_per_image"]


def test_a_100_step_run_at_ema_0_9999_loads_weights_that_learned(codes, tmp_path):
    """Without the warm-up this EMA was 99% the initial weights and predicted near-uniformly (NLL
    1.38 nats against ln 4 = 1.386), and samplers loaded it. With it the EMA follows the run: it is
    loaded, and scores far from uniform, like the raw weights."""
    from ctfgen.models.artifact import TrainedModel

    train_100_steps(codes, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "manifest.json").read_text())["info"]
    assert info["ema_moved"] >= 0.5 and "warnings" not in info
    loaded, loaded_raw = TrainedModel.load(tmp_path / "run"), TrainedModel.load(tmp_path / "run", ema=False)
    assert loaded.loaded_weights == "ema.safetensors"
    assert loaded_raw.loaded_weights == "model.safetensors"
    model, raw = loaded.module, loaded_raw.module
    nll_default, nll_raw = nats_per_token(model, codes), nats_per_token(raw, codes)
    # measured: raw 0.192 nats, EMA 0.245 (it averages the last ~10 steps of a run still improving)
    assert nll_raw < 0.25 * math.log(VOCAB)  # the run learned
    assert nll_default < 0.25 * math.log(VOCAB)


def test_an_ema_that_barely_moved_warns_and_is_not_loaded_by_default(codes, tmp_path, monkeypatch, capsys):
    """The same run with the decay not warmed up (as in 0.1.0): the run ends with a warning in the
    manifest and on stderr, and the loader takes the raw weights and says so."""
    import ctfgen.train.parallel as parallel
    from ctfgen.models.artifact import TrainedModel

    monkeypatch.setattr(parallel, "ema_decay", lambda decay, step: decay)
    train_100_steps(codes, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "manifest.json").read_text())["info"]
    assert info["ema_moved"] < 0.05
    assert any("EMA moved only" in w for w in info["warnings"])
    assert "EMA moved only" in capsys.readouterr().err
    loaded = TrainedModel.load(tmp_path / "run")
    assert loaded.loaded_weights == "model.safetensors"
    assert "loading the raw weights" in capsys.readouterr().err
    model, ema = loaded.module, TrainedModel.load(tmp_path / "run", ema=True).module  # asked for: loaded, and it is still near uniform
    assert nats_per_token(ema, codes) > 0.95 * math.log(VOCAB) > 2 * nats_per_token(model, codes)


def test_a_folder_without_the_measure_loads_its_ema_as_before(codes, tmp_path):
    """Folders of 0.1.0 record no "ema_moved": their EMA stays the default, as it was."""
    from ctfgen.artifacts import MANIFEST
    from ctfgen.models.artifact import TrainedModel

    train_100_steps(codes, tmp_path / "run")
    path = tmp_path / "run" / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["info"]["ema_moved"]
    path.write_text(json.dumps(manifest))
    assert TrainedModel.load(tmp_path / "run").loaded_weights == "ema.safetensors"


def test_the_suggested_ema_decay_suits_the_presets_run_lengths(capsys):
    """`train --help` suggests a decay whose averaging window, about 1 / (1 - decay) steps, is at
    most half of the demo's run (the tiny preset's typical length); 0.9999 (10,000 steps) was
    suggested for runs of 200."""
    from ctfgen.apps.cli import main
    from ctfgen.experiments.demo import DemoConfig

    with pytest.raises(SystemExit):
        main(["train", "ar", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    suggested = float(re.search(r"--ema DECAY keep an EMA .*?e\.g\. ([0-9.]+)", text).group(1))
    assert 1 / (1 - suggested) <= DemoConfig().steps / 2
