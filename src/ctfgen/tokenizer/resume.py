"""Checkpoints of a tokenizer training run, so a killed run continues where it stopped.

While training, the output folder is an artifact of kind "tokenizer_checkpoint" (not "tokenizer":
nothing downstream accepts an unfinished tokenizer by mistake):

    out/manifest.json            the training config, the data fingerprint, the step reached
    out/model.safetensors        weights
    out/training_state/          optimizer(s), discriminator, dead-code usage counts, batch order and
                                 RNG states (safetensors) + state.json (step, log, seconds so far)

Rerunning the same command resumes exactly (same weights as a run that was never stopped, on the
same device); the finished run replaces the folder with the tokenizer (artifact.save_tokenizer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from .. import run_state
from ..artifacts import (MANIFEST, artifact_dir, atomic_write_json, fingerprint_tensors, read_json, read_manifest,
                         write_manifest)
from ..config import from_dict, to_dict
from ..data import DataConfig
from ..errors import ArtifactError, CtfgenError
from ..filecheck import load_safetensors
from ..run_state import STATE_DIR
from .artifact import WEIGHTS

KIND = "tokenizer_checkpoint"
# fields that may change between invocations: the time budget and the size of the final report
RUN_FIELDS = ("minutes", "eval_limit")


def save_training_checkpoint(out: Path, *, config: dict, made_from: dict, step: int, steps: int,
                             model: torch.nn.Module, opt: torch.optim.Optimizer,
                             disc: torch.nn.Module | None, d_opt: torch.optim.Optimizer | None,
                             tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
    """Write the whole training state (step = steps done) and swap it in for the previous one."""
    model_state = run_state.cpu_tensors(model.state_dict())
    with artifact_dir(out, overwrite=True) as tmp:
        save_file(model_state, str(tmp / WEIGHTS))
        sdir = tmp / STATE_DIR
        sdir.mkdir()
        opt_tensors, opt_meta = run_state.optimizer_to_tensors(opt.state_dict())
        save_file(opt_tensors, str(sdir / run_state.OPTIMIZER_FILE))
        meta: dict[str, Any] = {"optimizer": opt_meta}
        if disc is not None and d_opt is not None:
            save_file(run_state.cpu_tensors(disc.state_dict()), str(sdir / "discriminator.safetensors"))
            d_tensors, meta["d_optimizer"] = run_state.optimizer_to_tensors(d_opt.state_dict())
            save_file(d_tensors, str(sdir / "d_optimizer.safetensors"))
        rng_tensors, meta["rng"] = run_state.capture_rng(next(model.parameters()).device)
        save_file(run_state.cpu_tensors({**{f"rng.{k}": v for k, v in rng_tensors.items()}, **tensors}), str(sdir / "state.safetensors"))
        atomic_write_json(sdir / run_state.STATE_JSON, {"step": step, **state, **meta})
        unfinished = (f"tokenizer training stopped at step {step} of {steps}: rerun the same `ctfgen tokenizer "
                      f"train` command (same --out) to finish it")
        write_manifest(tmp, kind=KIND, fingerprint=fingerprint_tensors(model_state), config=config,
                       made_from=made_from, info={"step": step, "steps": steps, "finished": False,
                                                  "unfinished": unfinished})


def _settings(config: Mapping[str, Any]) -> dict:
    """The part of a training config that a resume must keep: no run fields, no data path."""
    kept = {k: v for k, v in config.items() if k not in RUN_FIELDS}
    if isinstance(kept.get("data"), dict):
        data = kept["data"]
        try:  # data fields added since the checkpoint was written count as their defaults
            data = to_dict(from_dict(DataConfig, data))
        except CtfgenError:
            pass  # a field that no longer exists: compared as it is, and reported
        kept["data"] = {k: v for k, v in data.items() if k != "path"}
    return kept


def read_resumable(out: Path, config: dict, made_from: dict) -> dict | None:
    """The manifest of a checkpoint that this run may resume; None if `out` holds none.

    Refuses (ArtifactError) a checkpoint of another config or data, naming the first difference.
    """
    if not (out / MANIFEST).is_file():
        return None
    m = read_manifest(out)
    if m["kind"] != KIND:
        return None
    # where the data lives may change (a copy, another machine): its content is checked below, by fingerprint
    saved, now = (_settings(c) for c in (m.get("config", {}), config))
    diff = run_state.first_difference(saved, now)
    if diff is not None:
        raise ArtifactError(f"cannot resume {out}: config field '{diff}' differs from the checkpoint's; rerun with "
                            "the original settings, pass --overwrite to start again, or use another --out")
    if m.get("made_from", {}).get("data") != made_from.get("data"):
        raise ArtifactError(f"cannot resume {out}: it was trained on other data ({m.get('made_from', {}).get('data')}, "
                            f"now {made_from.get('data')}); use the same data, --overwrite, or another --out")
    return m


def load_training_checkpoint(out: Path, manifest: dict, *, device: torch.device | str) -> dict:
    """Everything save_training_checkpoint wrote, tensors on the CPU except the model's."""
    redo = f"the checkpoint cannot be resumed: pass --overwrite to train again from step 0, or restore a copy of {out}"

    def tensors(name: str) -> dict:
        return load_safetensors(out, manifest, name, redo=redo)

    state = read_json(out / STATE_DIR / run_state.STATE_JSON, what="tokenizer training state")
    flat = tensors(f"{STATE_DIR}/state.safetensors")
    sdir = out / STATE_DIR
    return {
        "state": state,
        "model": tensors(WEIGHTS),
        "optimizer": run_state.optimizer_from_tensors(tensors(f"{STATE_DIR}/{run_state.OPTIMIZER_FILE}"), state["optimizer"]),
        "disc": tensors(f"{STATE_DIR}/discriminator.safetensors") if (sdir / "discriminator.safetensors").is_file() else None,
        "d_optimizer": (run_state.optimizer_from_tensors(tensors(f"{STATE_DIR}/d_optimizer.safetensors"), state["d_optimizer"])
                        if "d_optimizer" in state else None),
        "rng": ({k[4:]: v for k, v in flat.items() if k.startswith("rng.")}, state["rng"]),
        "tensors": {k: v for k, v in flat.items() if not k.startswith("rng.")},
    }
