"""Checkpoints of a tokenizer training run, so a killed run continues where it stopped: the
tokenizer task's CheckpointFormat (train/task.py).

While training, the output folder is an artifact of kind "tokenizer_checkpoint" (not "tokenizer":
nothing downstream accepts an unfinished tokenizer by mistake), written by the Trainer's checkpoint
manager like a model run's (train/checkpoint.py):

    out/manifest.json            the training config, the data fingerprint, the step reached
    out/model.safetensors        weights
    out/training_state/          optimizer (by parameter name), RNG states, state.json, and
                                 task.safetensors: discriminator and its optimizer, dead-code usage
                                 counts, batch order and its generator
    out/metrics.jsonl            the metric records so far

Rerunning the same command resumes exactly (same weights as a run that was never stopped, on the
same device); the finished run replaces the folder with the tokenizer (artifact.save_tokenizer).
A checkpoint of release 0.1.0 (its own training_state/state.safetensors, discriminator.safetensors
and d_optimizer.safetensors, optimizer state by position) is read too (`load_release_0_1`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save_file

from .. import run_state
from ..artifacts import (MANIFEST, fingerprint_tensors, read_json, read_manifest, recover_interrupted_write,
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
LIVE_FILES = ("metrics.jsonl", "tensorboard", "wandb")  # train/checkpoint.py: a run killed before its first checkpoint


class TokenizerFormat:
    """The run folder of a tokenizer training: `config` (the TokenizerTrainConfig as a dict) and
    `made_from` ({"data": fingerprint, ...}) in every manifest; `overwrite`: start afresh whatever
    `out` holds (the finished run replaces it)."""

    def __init__(self, config: Mapping[str, Any], made_from: Mapping[str, Any], *, overwrite: bool = False):
        self.config, self.made_from, self.overwrite = dict(config), dict(made_from), overwrite

    def open(self, out: Path) -> dict | None:
        note = recover_interrupted_write(out)
        if note:
            print(f"note: {note}", file=sys.stderr)
        if self.overwrite:
            return None
        manifest = read_resumable(out, self.config, self.made_from)
        if manifest is None and out.exists() and any(p.name not in LIVE_FILES for p in out.iterdir()):
            raise CtfgenError(f"{out} already exists; choose another folder or pass --overwrite")
        return manifest

    def write_folder(self, tmp: Path, model_state: Mapping[str, torch.Tensor], *, info: Mapping[str, Any],
                     also: Callable[[Path], None]) -> None:
        save_file(dict(model_state), str(tmp / WEIGHTS))
        also(tmp)
        step, steps = info["step"], info["total_steps"]
        unfinished = (f"tokenizer training stopped at step {step} of {steps}: rerun the same `ctfgen tokenizer "
                      f"train` command (same --out) to finish it")
        write_manifest(tmp, kind=KIND, fingerprint=fingerprint_tensors(model_state), config=self.config,
                       made_from=self.made_from, info={"step": step, "steps": steps, "finished": False,
                                                       "unfinished": unfinished, "last": info.get("last", {})})

    def load(self, out: Path, manifest: dict, param_names: list[str]) -> dict | None:
        if (out / STATE_DIR / "rng.safetensors").is_file():
            return None  # the current format: train/checkpoint.py reads it
        return load_release_0_1(out, manifest, param_names)


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


def load_release_0_1(out: Path, manifest: dict, param_names: list[str]) -> dict:
    """A checkpoint written by release 0.1.0's tokenizer trainer, as checkpoint.load_training_state
    returns one: the optimizer's state keyed by `param_names` (0.1.0 kept it by position, in the
    order of the model's parameters), one rank's RNG states, and the task's state."""
    redo = f"the checkpoint cannot be resumed: pass --overwrite to train again from step 0, or restore a copy of {out}"
    sdir = out / STATE_DIR

    def tensors(name: str) -> dict:
        return load_safetensors(out, manifest, f"{STATE_DIR}/{name}", redo=redo)

    state = read_json(sdir / run_state.STATE_JSON, what="tokenizer training state")
    opt = run_state.optimizer_from_tensors(tensors(run_state.OPTIMIZER_FILE), state["optimizer"])
    optimizer = {"state": {param_names[i]: s for i, s in opt["state"].items()},
                 "param_groups": [{**g, "params": [param_names[i] for i in g["params"]]} for g in opt["param_groups"]]}
    flat = tensors("state.safetensors")
    task = {k: v for k, v in flat.items() if not k.startswith("rng.")}
    meta = {"restarted": state["restarted"], "batch_pos": state["batch_pos"]}
    if (sdir / "discriminator.safetensors").is_file():
        task.update({f"disc.{k}": v for k, v in tensors("discriminator.safetensors").items()})
        task.update({f"d_opt.{k}": v for k, v in tensors("d_optimizer.safetensors").items()})
        meta["d_optimizer"] = state["d_optimizer"]
    return {
        "state": {"step": state["step"], "seconds": state["seconds"]},
        "model": load_safetensors(out, manifest, WEIGHTS, redo=redo),
        "ema": None,
        "optimizer": optimizer,
        "rng": [({k[4:]: v for k, v in flat.items() if k.startswith("rng.")}, state["rng"])],
        "task": (task, meta),
    }
