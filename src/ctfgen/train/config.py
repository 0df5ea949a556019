"""What a training run is (TrainConfig, recorded in the checkpoint) and how it is executed (RunOptions).

The split matters for resuming: every field of TrainConfig must match the checkpoint being resumed,
while RunOptions (logging, checkpoint cadence, device, gradient accumulation, FSDP, compile) may
change between invocations, e.g. when a run moves to a machine with less memory. The global batch is
part of the recipe; how it is split across ranks and micro-steps is not.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CtfgenError
from ..run_state import auto_ckpt_every  # noqa: F401  (older imports)

if TYPE_CHECKING:  # the command line reads these configs without importing torch
    import torch

KINDS = ("baseline", "ar", "aux")
PRECISIONS = ("auto", "bf16", "fp32")
REFERENCE_BATCH = 256  # learning rates are given per this many samples (LlamaGen: 1e-4 at 256)
# Default rates per REFERENCE_BATCH by preset. LlamaGen's 1e-4 is for its long ImageNet runs; the
# tiny and small presets train for hundreds of steps, where 8e-3 was the best rate measured
# (docs/RESULTS.md: the demo's sweep at 200 steps and the quality bench at 1000).
SHORT_RUN_PRESETS = ("tiny", "small")
SHORT_RUN_LR = 8e-3
LLAMAGEN_LR = 1e-4


def default_lr(preset: str) -> float:
    """The learning rate per 256 samples that `ctfgen train` uses when --lr is not given."""
    return SHORT_RUN_LR if preset in SHORT_RUN_PRESETS else LLAMAGEN_LR


@dataclass
class TrainConfig:
    kind: str = "ar"  # baseline | ar (stage 1) | aux (stage 2)
    preset: str = "tiny"
    steps: int = 0  # optimizer steps; 0: derive from `epochs`
    epochs: float = 0.0  # used when steps == 0; an epoch is one pass over the codes (one view per image)
    batch_size: int = 64  # global batch per optimizer step, summed over ranks and micro-steps
    lr: float = 1e-4  # per REFERENCE_BATCH samples; scaled linearly with batch_size
    warmup_steps: int = 0  # linear warm-up from 0
    cosine: bool = False  # cosine decay to min_lr_ratio * lr after warm-up (else constant)
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05  # on parameters with >= 2 dims only (matrices and embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema: float = 0.0  # EMA decay of the weights (e.g. 0.9999); 0: no EMA
    seed: int = 0
    aux_coarse_noise: float = 0.0  # stage 2: fraction of coarse inputs replaced by random labels
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields over the preset

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        where = "train config"
        if self.kind not in KINDS:
            raise CtfgenError(f"{where}: kind {self.kind!r} is not one of {KINDS}")
        if self.steps < 0 or self.epochs < 0:
            raise CtfgenError(f"{where}: steps and epochs must be >= 0")
        if self.batch_size < 1:
            raise CtfgenError(f"{where}: batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise CtfgenError(f"{where}: lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise CtfgenError(f"{where}: warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise CtfgenError(f"{where}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema < 1.0:
            raise CtfgenError(f"{where}: ema must be in [0, 1) (0 disables), got {self.ema}")
        if not 0.0 <= self.aux_coarse_noise < 1.0:
            raise CtfgenError(f"{where}: aux_coarse_noise must be in [0, 1), got {self.aux_coarse_noise}")
        if self.aux_coarse_noise and self.kind != "aux":
            raise CtfgenError(f"{where}: aux_coarse_noise applies to kind 'aux' only, not {self.kind!r}")

    @property
    def peak_lr(self) -> float:
        return self.lr * self.batch_size / REFERENCE_BATCH

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.steps:
            return self.steps
        if not self.epochs:
            raise CtfgenError("train config: give the length of the run as steps (--steps) or epochs (--epochs)")
        return max(1, math.ceil(self.epochs * steps_per_epoch))

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate for optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
        peak = self.peak_lr
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        if not self.cosine:
            return peak
        span = max(1, total - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = peak * self.min_lr_ratio
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class RunOptions:
    device: str = "auto"  # cpu, cuda, cuda:N, auto; under torchrun CUDA ranks use cuda:LOCAL_RANK
    grad_accum: int = 1  # micro-steps per optimizer step on each rank
    log_every: int = 50  # optimizer steps between metric records
    ckpt_every: int | None = None  # optimizer steps between checkpoints (0: only at the end; None: auto_ckpt_every)
    stop_after: int = 0  # stop this invocation once this many optimizer steps are done (0: run to the end)
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FullyShardedDataParallel)
    compile: bool = False  # torch.compile the model
    progress: bool = True  # tqdm bar on rank 0
    # live logs on rank 0, beside metrics.jsonl (`--log-to tensorboard`, `--log-to wandb`)
    tensorboard: bool = False  # TensorBoard event files in out/tensorboard (needs the tensorboard package)
    wandb: bool = False  # Weights & Biases in offline mode, files in out/wandb (needs the wandb package)
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 elsewhere; "bf16": autocast anywhere; "fp32"
    aux_loss: str = "auto"  # stage 2's loss formulation: auto, loop, gather, masked (models/member_loss.py)

    def __post_init__(self) -> None:
        for name in ("grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise CtfgenError(f"run options: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("ckpt_every", "stop_after"):
            if (getattr(self, name) or 0) < 0:
                raise CtfgenError(f"run options: {name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise CtfgenError(f"run options: precision must be one of {PRECISIONS}, got {self.precision!r}")
        from ..models.member_loss import IMPLS

        if self.aux_loss not in ("auto",) + IMPLS:
            raise CtfgenError(f"run options: aux_loss must be one of {('auto',) + IMPLS}, got {self.aux_loss!r}")
        # checked on every rank, so a missing package stops all of them, not just the one that logs
        for flag, package, extra in (("tensorboard", "tensorboard", "tensorboard"), ("wandb", "wandb", "wandb")):
            if getattr(self, flag) and importlib.util.find_spec(package) is None:
                raise CtfgenError(f"--log-to {flag}: the {package!r} package is not installed "
                                  f"(pip install 'ctfgen[{extra}]' or pip install {package})")

    def autocast(self, device: torch.device):
        """The autocast context of a training step on `device` (bf16 or none, see `precision`)."""
        import torch

        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
