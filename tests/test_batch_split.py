"""How the global batch is split (micro-batches of gradient accumulation, DDP ranks) does not change
the update: every loss is a sum over the positions it counts, divided once by the count of the whole
global batch, and a sample's random draws (stage 2's coarse noise) are its own. Dropout is off:
the ranks' dropout draws differ from the single process's by design."""
from __future__ import annotations

import pytest
import torch

from test_ddp import NO_DROPOUT, cli as ddp_cli, weights
from test_train import make_codes, make_coarse

OVERRIDES = {k: float(v) if k.endswith("dropout") or k.endswith("prob") else int(v)
             for k, v in (o.split("=") for o in NO_DROPOUT)}
# (kind, --aux-coarse-noise): every model kind, and stage 2 with the noise that makes the number of
# counted positions differ between micro-batches
CASES = [("baseline", 0.0), ("ar", 0.0), ("aux", 0.0), ("aux", 0.3)]
IDS = [f"{k}-noise{p}" for k, p in CASES]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    return {"codes": make_codes(root / "codes"), "coarse": make_coarse(root / "coarse")}


def train_here(inputs, out, kind: str, noise: float, grad_accum: int):
    from ctfgen.train import RunOptions, TrainConfig, train

    cfg = TrainConfig(kind=kind, preset="tiny", steps=3, batch_size=16, lr=1e-2, ema=0.5, seed=1,
                      aux_coarse_noise=noise, model_overrides=OVERRIDES)
    return train(cfg, codes_dir=inputs["codes"], coarse_map_dir=None if kind == "baseline" else inputs["coarse"],
                 out_dir=out, run=RunOptions(device="cpu", progress=False, log_every=1, grad_accum=grad_accum))


def assert_same_update(got: dict, ref: dict, what: str) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=0, msg=f"{what}: {k}")


@pytest.mark.parametrize("kind,noise", CASES, ids=IDS)
def test_four_micro_batches_give_the_update_of_one(inputs, tmp_path, kind, noise):
    one = train_here(inputs, tmp_path / "one", kind, noise, grad_accum=1)
    four = train_here(inputs, tmp_path / "four", kind, noise, grad_accum=4)
    assert_same_update(weights(tmp_path / "four"), weights(tmp_path / "one"), f"{kind} grad_accum 4")
    # the logged loss is the global batch's mean too
    for a, b in zip(one.records, four.records):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.parametrize("kind,noise", CASES, ids=IDS)
def test_two_ranks_give_the_update_of_one(inputs, tmp_path, kind, noise):
    train_here(inputs, tmp_path / "one", kind, noise, grad_accum=1)
    ddp_cli(inputs, tmp_path / "two", *(["--aux-coarse-noise", str(noise)] if noise else []), procs=2, kind=kind)
    assert_same_update(weights(tmp_path / "two"), weights(tmp_path / "one"), f"{kind} on 2 ranks")
