"""`torchrun` on one device: DDP and FSDP training through the CLI, and a resume.

On a small codes store made here (no dropout, so runs repeat): a DDP launch of `ctfgen train ar`
stopped halfway (--stop-after), then a second launch that resumes it under FSDP to the end
(checkpoints do not depend on the wrapping). It must end where an uninterrupted run of the same
settings, trained in this process, ends. Two launches, since each starts two Python processes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

NO_DROPOUT = ["token_dropout=0", "resid_dropout=0", "ffn_dropout=0", "class_dropout_prob=0",
              "n_layer=2", "n_head=2", "dim=64"]
VOCAB, K, GRID, CLASSES = 256, 16, 4, 10


def make_inputs(root: Path, *, n: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """A codes store and a coarse map, like `ctfgen encode` and `ctfgen cluster` write them."""
    from ...artifacts import MANIFEST
    from ...cluster import CoarseMap
    from ...codes import CodesConfig, CodeStore

    codes_dir, coarse_dir = root / "codes", root / "coarse"
    if not (codes_dir / MANIFEST).is_file():
        rng = np.random.default_rng(seed)
        codes = rng.integers(0, VOCAB, size=(n, 1, GRID * GRID)).astype(np.uint16)
        labels = rng.integers(0, CLASSES, size=n).astype(np.int64)
        CodeStore.save(codes_dir, codes, labels, overwrite=True, made_from={"tokenizer": "gpu-check", "data": "random"},
                       config=CodesConfig(split="train", grid=[GRID, GRID], vocab_size=VOCAB, num_classes=CLASSES))
    if not (coarse_dir / MANIFEST).is_file():
        CoarseMap.from_labels(torch.arange(VOCAB) % K, k=K, method="modulo",
                              tokenizer_fingerprint="gpu-check").save(coarse_dir)
    return codes_dir, coarse_dir


def _launch(codes: Path, coarse: Path, out: Path, device: str, *extra: str, steps: int, timeout: float) -> dict:
    args = ["train", "ar", "--codes", str(codes), "--coarse-map", str(coarse), "--out", str(out),
            "--steps", str(steps), "--batch-size", "8", "--lr", "1e-2", "--device", device, "--no-progress",
            "--log-every", "1", "--seed", "1", "--preset", "tiny"]
    for opt in NO_DROPOUT:
        args += ["--model-opt", opt]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "ctfgen",
           *args, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[3])  # the ctfgen being checked, not another install
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = 124, f"timed out after {timeout:.0f} s: {str(e.stdout or '')[-1000:]}"
    return {"args": " ".join(extra) or "(DDP)", "returncode": rc, "seconds": time.perf_counter() - t0,
            "output_tail": tail if rc else tail[-600:]}


def _reference(codes: Path, coarse: Path, out: Path, device: str, steps: int) -> None:
    """The uninterrupted run, in this process, with the launches' settings."""
    from ...train import RunOptions, TrainConfig, train

    overrides = {k: float(v) if "dropout" in k or "prob" in k else int(v) for k, v in (o.split("=") for o in NO_DROPOUT)}
    train(TrainConfig(kind="ar", preset="tiny", steps=steps, batch_size=8, lr=1e-2, seed=1, model_overrides=overrides),
          codes_dir=codes, coarse_map_dir=coarse, out_dir=out,
          run=RunOptions(device=device, progress=False, log_every=1))


def run_smoke(root: Path, device: torch.device, *, steps: int = 4, timeout: float = 180.0) -> dict:
    from safetensors.torch import load_file

    from ...artifacts import read_json

    codes, coarse = make_inputs(root / "inputs")
    for old in ("resumed", "reference"):  # a rerun of the check starts these runs afresh
        shutil.rmtree(root / old, ignore_errors=True)
    dev = "cuda" if device.type == "cuda" else "cpu"
    half = steps // 2
    # the live log too, when its package is there (it is an optional extra)
    tb = ["--log-to", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    runs = {"ddp_stopped": _launch(codes, coarse, root / "resumed", dev, "--stop-after", str(half), *tb,
                                   steps=steps, timeout=timeout)}
    metrics = root / "resumed" / "metrics.jsonl"
    first_lines = metrics.read_text().splitlines() if metrics.is_file() else []
    if not runs["ddp_stopped"]["returncode"]:
        runs["fsdp_resume"] = _launch(codes, coarse, root / "resumed", dev, "--fsdp", *tb, steps=steps,
                                      timeout=timeout)
    _reference(codes, coarse, root / "reference", dev, steps)
    out = {"runs": runs, "steps": steps, "stopped_at": half}
    if any(r["returncode"] for r in runs.values()):
        out["ok"] = False
        return out
    state = read_json(root / "resumed" / "training_state" / "state.json")
    lines = metrics.read_text().splitlines()
    steps_logged = [json.loads(line)["step"] for line in lines if line.strip()]
    # a resume keeps the first launch's records; a fresh start would have rewritten them
    kept = len(first_lines) == half and lines[:half] == first_lines
    from ...models.artifact import WEIGHTS

    a = load_file(str(root / "reference" / WEIGHTS))
    b = load_file(str(root / "resumed" / WEIGHTS))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    # fp32 on a CPU repeats exactly; bf16 autocast on a GPU may pick other kernels after a restart
    tol = 1e-6 if device.type == "cpu" else 2e-3
    tb_ok = not tb or any((root / "resumed" / "tensorboard").glob("events.out.tfevents.*"))
    out.update(resumed_step=state["step"], steps_logged=steps_logged, first_records_kept=kept,
               max_weight_diff=diff, tolerance=tol, tensorboard_events=bool(tb) and tb_ok,
               ok=state["step"] == steps and steps_logged == list(range(1, steps + 1)) and kept and diff <= tol
               and tb_ok)
    return out
