"""DDP and FSDP: two CPU processes (gloo, launched by torchrun through the CLI) make the same updates
as one process over the same global batch, with and without gradient accumulation."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train import make_codes, make_coarse

# no dropout anywhere: the ranks' random draws differ from the single process's by design
NO_DROPOUT = ["token_dropout=0", "resid_dropout=0", "ffn_dropout=0", "class_dropout_prob=0",
              "n_layer=1", "n_head=2", "dim=32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(inputs: dict, out: Path, *extra: str, procs: int = 1, kind: str = "ar") -> None:
    coarse = [] if kind == "baseline" else ["--coarse-map", str(inputs["coarse"])]
    args = ["train", kind, "--codes", str(inputs["codes"]), *coarse,
            "--out", str(out), "--steps", "3", "--batch-size", "16", "--lr", "1e-2", "--ema", "0.5",
            "--device", "cpu", "--no-progress", "--log-every", "1", "--seed", "1"]
    for opt in NO_DROPOUT:
        args += ["--model-opt", opt]
    if procs == 1:
        cmd = [sys.executable, "-m", "ctfgen", *args, *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "ctfgen", *args, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def weights(out: Path) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in load_file(str(out / "model.safetensors")).items()}
    tensors.update({f"ema.{k}": v for k, v in load_file(str(out / "ema.safetensors")).items()})
    return tensors


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_ddp_two_processes_match_one(tmp_path):
    inputs = {"codes": make_codes(tmp_path / "codes"), "coarse": make_coarse(tmp_path / "coarse")}
    # the reference runs in this process (one torch import less); same settings as `cli` below
    from ctfgen.train import RunOptions, TrainConfig, train

    overrides = {k: float(v) if k.endswith("dropout") or k.endswith("prob") else int(v)
                 for k, v in (o.split("=") for o in NO_DROPOUT)}
    train(TrainConfig(kind="ar", preset="tiny", steps=3, batch_size=16, lr=1e-2, ema=0.5, seed=1,
                      model_overrides=overrides),
          codes_dir=inputs["codes"], coarse_map_dir=inputs["coarse"], out_dir=tmp_path / "single",
          run=RunOptions(device="cpu", progress=False, log_every=1, tensorboard=False))
    live = ("--log-to", "tensorboard") if importlib.util.find_spec("tensorboard") else ()
    cli(inputs, tmp_path / "ddp", *live, procs=2)
    cli(inputs, tmp_path / "ddp_accum", "--grad-accum", "2", procs=2)
    cli(inputs, tmp_path / "fsdp", "--fsdp", procs=2)
    ref = weights(tmp_path / "single")
    for name in ("ddp", "ddp_accum", "fsdp"):
        got = weights(tmp_path / name)
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=0, msg=f"{name}: {k}")
    # the comparison is not vacuous: the EMA (0.5 * init + ...) differs from the trained weights
    assert any(not torch.equal(ref[f"ema.{k[6:]}"], ref[k]) for k in ref if k.startswith("model."))
    if live:  # rank 0 alone writes the live log: event files of one process (one more after each checkpoint)
        files = list((tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*"))
        assert files and len({f.name.split(".")[-2] for f in files}) == 1, files  # name: ...<host>.<pid>.<n>
    rng = load_file(str(tmp_path / "ddp" / "training_state" / "rng.safetensors"))
    assert {k.split(".")[0] for k in rng} == {"rank0", "rank1"}  # every rank's random state is saved


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_diverged_run_stops_every_rank_and_saves_nothing_bad(tmp_path, mode):
    inputs = {"codes": make_codes(tmp_path / "codes"), "coarse": make_coarse(tmp_path / "coarse")}
    args = ["train", "ar", "--codes", str(inputs["codes"]), "--coarse-map", str(inputs["coarse"]),
            "--out", str(tmp_path / "run"), "--steps", "8", "--batch-size", "16", "--lr", "1e6", "--ckpt-every", "1",
            "--device", "cpu", "--no-progress", "--log-every", "4", *(["--fsdp"] if mode == "fsdp" else [])]
    for opt in NO_DROPOUT:
        args += ["--model-opt", opt]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "ctfgen", *args]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("error: training diverged at step") == 2, done.stderr[-3000:]  # both ranks, no hang
    import json

    saved = json.loads((tmp_path / "run" / "manifest.json").read_text())["info"]["step"]
    assert 1 <= saved < 8
    assert all(bool(torch.isfinite(t).all()) for t in weights_model(tmp_path / "run").values())


def weights_model(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))
