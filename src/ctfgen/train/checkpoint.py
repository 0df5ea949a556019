"""Checkpoints: one artifact folder (kind "model") that is both the resumable state and what samplers load.

    out/manifest.json           model config, train config, made_from {codes, coarse_map, tokenizer}
    out/model.safetensors       weights (fp32)            } the model folder that inference reads
    out/ema.safetensors         EMA weights, when kept    } (models/artifact.py: TrainedModel)
    out/training_state/         optimizer.safetensors + state.json (step, data position, optimizer
                                hyper-parameters, the task's own JSON) + rng.safetensors (torch/CUDA/
                                numpy/python, per rank) + task.safetensors (the task's own tensors)
    out/metrics.jsonl, out/loss_curve.png, out/tensorboard/, out/wandb/ (live logs, when asked for)

Everything is tensors in safetensors or plain JSON; nothing is pickled. The folder is replaced in one
rename (safe_write.artifact_dir), so a kill during saving leaves the previous checkpoint intact, and
the next run recovers the newest complete copy (safe_write.recover_interrupted_write). The manifest
records the size and SHA-256 of every tensor file, checked before resuming or sampling.

The training state is the same for every task (train/task.py); the weights and the manifest are the
task's CheckpointFormat's (a model folder here, a "tokenizer_checkpoint" for the tokenizer).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save_file

from ..artifacts import (MANIFEST, artifact_dir, atomic_write_json, read_json, read_manifest,
                         recover_interrupted_write, write_manifest)
from ..errors import ArtifactError
from ..filecheck import load_safetensors
from ..models.artifact import EMA_WEIGHTS, KIND, WEIGHTS

from ..run_state import (OPTIMIZER_FILE, STATE_DIR, STATE_JSON, cpu_tensors, optimizer_from_tensors,
                         optimizer_to_tensors)
from .logs import METRICS

LIVE_FILES = (METRICS, "tensorboard", "wandb")  # written between checkpoints, carried into each new one
TASK_FILE = "task.safetensors"  # the task's own tensors (TrainTask.state), in STATE_DIR


# ---------------------------------------------------------------- writing

def save_checkpoint(
    out_dir: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, torch.Tensor] | None,
    optimizer_state: Mapping[str, Any],
    rng_per_rank: list[tuple[dict[str, torch.Tensor], dict]],
    state: Mapping[str, Any],
    info: Mapping[str, Any],
    write_folder: Callable[..., Any],
    task_state: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]] = ({}, {}),
    extra_files: Callable[[Path], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Write the whole checkpoint to a temporary sibling and swap it in.

    `write_folder(tmp, model_state, info=..., also=...)` writes the weights and the manifest
    (CheckpointFormat.write_folder); `task_state` is TrainTask.state(). `extra_files(tmp)` writes
    derived files (the loss curve); `before_commit()` runs right before the live files (metrics,
    TensorBoard) are copied from the old folder into the new one, so writers can close their
    handles first. Copied, not moved: the old folder stays whole until the swap.
    """
    out = Path(out_dir)
    model_cpu = cpu_tensors(model_state)
    task_tensors, task_meta = task_state

    def training_files(tmp: Path) -> None:  # beside the model folder's weights, before its manifest
        if ema_state is not None:
            save_file(cpu_tensors(ema_state), str(tmp / EMA_WEIGHTS))
        sdir = tmp / STATE_DIR
        sdir.mkdir()
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer_state)
        save_file(opt_tensors, str(sdir / OPTIMIZER_FILE))
        rng_tensors = {f"rank{r}.{k}": v for r, (ts, _) in enumerate(rng_per_rank) for k, v in ts.items()}
        save_file(cpu_tensors(rng_tensors), str(sdir / "rng.safetensors"))
        if task_tensors:
            save_file(cpu_tensors(task_tensors), str(sdir / TASK_FILE))
        atomic_write_json(sdir / STATE_JSON, {**state, "optimizer": opt_meta, "rng": [meta for _, meta in rng_per_rank],
                                                **({"task": dict(task_meta)} if task_meta else {})})
        if extra_files is not None:
            extra_files(tmp)
        if before_commit is not None:
            before_commit()
        for name in LIVE_FILES:
            if (out / name).is_dir():
                shutil.copytree(out / name, tmp / name)
            elif (out / name).is_file():
                shutil.copy2(out / name, tmp / name)

    with artifact_dir(out, overwrite=True) as tmp:
        write_folder(tmp, model_cpu, info=info, also=training_files)


# ---------------------------------------------------------------- reading

def read_checkpoint_manifest(out_dir: str | Path, kind: str = KIND, *, what: str = "a model checkpoint") -> dict | None:
    """The manifest of a checkpoint of `kind` to resume, None for a fresh start; refuses foreign folders.

    A save that was killed is finished or undone first, so the newest complete checkpoint resumes.
    """
    out = Path(out_dir)
    note = recover_interrupted_write(out)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if not out.exists():
        return None
    if not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a folder")
    if not (out / MANIFEST).is_file():
        others = sorted(p.name for p in out.iterdir() if p.name not in LIVE_FILES)
        if others:
            raise ArtifactError(f"--out {out} exists but is not {what} (it holds {others[:5]}); "
                                "choose another folder")
        return None  # only the live logs of a run killed before its first checkpoint
    return read_manifest(out, kind)


def load_training_state(out_dir: str | Path, kind: str = KIND) -> dict:
    """Everything needed to continue: model/EMA/optimizer tensors, step, RNG states and the task's
    state (tensors, JSON)."""
    out = Path(out_dir)
    sdir = out / STATE_DIR
    for path in (out / WEIGHTS, sdir / OPTIMIZER_FILE, sdir / "rng.safetensors"):
        if not path.is_file():
            raise ArtifactError(f"checkpoint {out} is incomplete: {path.relative_to(out)} is missing")
    manifest = read_manifest(out, kind)
    redo = (f"the checkpoint cannot be resumed: restore a copy of {out}, or move it away to train again "
            "from step 0")

    def tensors(name: str) -> dict:
        return load_safetensors(out, manifest, name, redo=redo)

    state = read_json(sdir / STATE_JSON, what="training state")
    rng_flat = tensors(f"{STATE_DIR}/rng.safetensors")
    rng = []
    for r, meta in enumerate(state["rng"]):
        prefix = f"rank{r}."
        rng.append(({k[len(prefix):]: v for k, v in rng_flat.items() if k.startswith(prefix)}, meta))
    ema_path = out / EMA_WEIGHTS
    return {
        "state": state,
        "model": tensors(WEIGHTS),
        "ema": tensors(EMA_WEIGHTS) if ema_path.is_file() else None,
        "optimizer": optimizer_from_tensors(tensors(f"{STATE_DIR}/{OPTIMIZER_FILE}"), state["optimizer"]),
        "rng": rng,
        "task": (tensors(f"{STATE_DIR}/{TASK_FILE}") if (sdir / TASK_FILE).is_file() else {}, state.get("task", {})),
    }
