"""The trainer's side of checkpoints: whether a run resumes, what it restores, what it saves.

The folder format and the atomic write are train/checkpoint.py's, the weights' and the manifest's
the task's (its CheckpointFormat); this class adds the decisions around them for one run under any
number of ranks: rank 0 alone reads the folder and decides (fresh start, resume, or refusal naming
the setting that differs), every rank then reads the same checkpoint (so multi-node runs need the
folder on a shared filesystem), and on saving every rank takes part in gathering the full
(unsharded) state while rank 0 alone writes it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..dist import DistInfo, all_gather_objects, barrier, broadcast_object
from .. import run_state
from ..artifacts import read_manifest
from ..errors import ArtifactError, CtfgenError
from . import checkpoint as ckpt
from ..models.artifact import untrusted_ema_note
from .task import CheckpointFormat
from .parallel import EMA, ema_movement, full_model_state, full_optimizer_state, load_full_optimizer_state


class CheckpointManager:
    """Checkpoints of one run folder `out` in the task's `format` (train/task.py CheckpointFormat:
    what the folder must hold to resume, how its weights and manifest are written); `fsdp`: the
    model is sharded (its full state is gathered to save it)."""

    def __init__(self, out: Path, dist: DistInfo, *, format: CheckpointFormat, fsdp: bool = False):
        self.out, self.dist, self.fsdp, self.format = Path(out), dist, fsdp, format
        self.last_saved = 0  # step of the newest checkpoint in the folder (0: none)

    def read(self, param_names: list[str]) -> dict | None:
        """The training state to resume from (checkpoint.load_training_state, or the format's reading
        of an earlier release's folder, optimizer states keyed by `param_names`), None for a fresh
        start. Raises ArtifactError on every rank when the folder holds another run or other inputs."""
        decision: Any = None
        if self.dist.is_main:
            try:
                manifest = self.format.open(self.out)
                decision = ("resume" if manifest is not None else "fresh", None)
            except CtfgenError as e:
                decision = ("error", str(e))
        decision = broadcast_object(decision, self.dist)
        if decision[0] == "error":
            raise ArtifactError(decision[1])
        if decision[0] != "resume":
            return None
        manifest = read_manifest(self.out)
        resume = self.format.load(self.out, manifest, param_names)
        if resume is None:
            resume = ckpt.load_training_state(self.out, manifest["kind"])
        self.last_saved = int(resume["state"]["step"])
        return resume
    def restore(self, resume: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                ema: EMA | None) -> bool:
        """Load the optimizer, the EMA and this rank's RNG states from `resume` (the model's weights
        are loaded before it is wrapped). False when the RNG states cannot be restored because another
        number of ranks wrote them: the caller then seeds afresh."""
        load_full_optimizer_state(model, optimizer, resume["optimizer"], fsdp=self.fsdp)
        if ema is not None:
            if resume["ema"] is None:
                raise ArtifactError(f"cannot resume {self.out}: the run keeps an EMA but ema.safetensors is missing")
            ema.load(resume["ema"])
        saved_world = len(resume["rng"])
        if saved_world == self.dist.world_size:
            run_state.restore_rng(*resume["rng"][self.dist.rank], device=self.dist.device)
            return True
        if self.dist.is_main:
            print(f"note: checkpoint written by {saved_world} rank(s), resuming on {self.dist.world_size}: "
                  "the data order is kept, random draws (dropout) restart from new seeds")
        return False

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, *,
             state: Mapping[str, Any], info: Mapping[str, Any], extra_files: Callable[[Path], None] | None = None,
             before_commit: Callable[[], None] | None = None, ema_init: Mapping[str, torch.Tensor] | None = None,
             task_state: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]] = ({}, {})) -> None:
        """Write the checkpoint of `step` (called on every rank; see checkpoint.save_checkpoint for
        `state`, `info`, `task_state`, `extra_files` and `before_commit`). With an EMA and the run's
        initial weights `ema_init`, info gets "ema_moved" (parallel.ema_movement), and the last
        checkpoint of a run (info["finished"]) a warning when the EMA is not trusted (models/artifact.py)."""
        full = full_model_state(model, fsdp=self.fsdp)
        ema_full = ema.full_state(full) if ema is not None else None
        opt_state = full_optimizer_state(model, optimizer, fsdp=self.fsdp)
        rng = all_gather_objects(run_state.capture_rng(self.dist.device), self.dist)
        if self.dist.is_main:
            if ema_full is not None and ema_init is not None:
                info = {**info, "ema_moved": round(ema_movement(ema_full, full, ema_init), 6)}
                note = untrusted_ema_note(info["ema_moved"]) if info.get("finished") else None
                if note is not None:
                    info["warnings"] = [*info.get("warnings", []), note]
                    print(f"warning: {self.out}: {note}", file=sys.stderr)
            ckpt.save_checkpoint(self.out, model_state=full, ema_state=ema_full, optimizer_state=opt_state,
                                 rng_per_rank=rng, state=state, info=info, write_folder=self.format.write_folder,
                                 task_state=task_state, extra_files=extra_files, before_commit=before_commit)
        self.last_saved = step
        barrier(self.dist)
