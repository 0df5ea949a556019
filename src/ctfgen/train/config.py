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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import check_fields, option
from ..errors import CtfgenError
from ..models.config import AUX_LOSS_IMPLS, KINDS
from ..models.preset_table import PRESET_NAMES
from ..run_state import auto_ckpt_every  # noqa: F401  (older imports)
from ..run_state import cosine_progress

if TYPE_CHECKING:  # the command line reads these configs without importing torch
    import torch

PRECISIONS = ("auto", "bf16", "fp32")
AUX_LOSSES = ("auto", *AUX_LOSS_IMPLS)  # stage 2's loss formulations (models/member_loss.py)
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
    """What a training run is; recorded in the checkpoint, and every field must match on resume.
    Each field's help, bounds and choices are in its `option` (config.py): `ctfgen train` makes its
    flags from them (apps/cli/train.py) and `check` refuses what they refuse."""

    kind: str = option("ar", "model kind: " + " | ".join(KINDS), choices=tuple(KINDS))  # models/config.py
    preset: str = option("tiny", "model size: tiny/small (Fashion-MNIST), B, L, XL, XXL, 3B (LlamaGen's GPT sizes, also "
                                 "spelled GPT-B, ...), aux-B, aux-L", metavar="PRESET", choices=PRESET_NAMES)
    # the length of the run: steps, or (steps == 0) epochs, each one view of every image
    steps: int = option(0, "optimizer steps to train (or --epochs)", min=0)
    epochs: float = option(0.0, "passes over the codes (one random view per image), when --steps is not given", min=0.0)
    # summed over ranks and micro-steps: how it is split is a RunOptions matter
    batch_size: int = option(64, "global batch per optimizer step", min=1)
    lr: float = option(1e-4, f"learning rate per {REFERENCE_BATCH} samples, scaled linearly with --batch-size",
                       min=0.0, min_open=True)
    warmup_steps: int = option(0, "linear warm-up steps", min=0, flag="--warmup", metavar="STEPS")
    cosine: bool = option(False, "cosine decay after warm-up (default: constant lr)")  # to min_lr_ratio * lr
    min_lr_ratio: float = option(0.0, "end of the cosine or WSD decay, as a fraction of lr", min=0.0, max=1.0)
    # warm-up, stable, decay (WSD): a constant rate whose curve a longer run continues unchanged, so the
    # held-out loss at any step before the decay is what a longer budget would have passed through
    wsd_decay: float = option(0.0, "constant lr after warm-up, then a linear decay to min_lr_ratio * lr over this "
                                   "fraction of the run at its end (warm-up, stable, decay)", min=0.0, max=1.0,
                              note="0 = off", metavar="FRACTION")
    weight_decay: float = option(0.05, "AdamW decay on >=2-D weights", min=0.0)  # matrices and embeddings only
    beta1: float = option(0.9, "AdamW beta1: decay of its running mean of the gradients", min=0.0, max=1.0,
                          max_open=True)
    beta2: float = option(0.95, "AdamW beta2: decay of its running mean of the squared gradients", min=0.0, max=1.0,
                          max_open=True)
    grad_clip: float = option(1.0, "max gradient norm", min=0.0, note="0 = off")  # global norm over all parameters
    # warmed up (train/parallel.py ema_decay); loaded by default once it has moved (models/artifact.py)
    ema: float = option(0.0, "keep an EMA of the weights with this decay, e.g. 0.99 for runs of hundreds to thousands "
                             "of steps (it averages about the last 1/(1-DECAY) steps; LlamaGen's 0.9999 is for 100k+); "
                             "samplers use it", min=0.0, max=1.0, max_open=True, note="0 = off", metavar="DECAY")
    seed: int = option(0, "seed of initial weights, data order and dropout", min=0, max=2**63 - 1)
    aux_coarse_noise: float = option(0.0, "fraction of coarse inputs replaced by random labels while training stage 2, "
                                          "so it tolerates stage-1 mistakes", min=0.0, max=1.0, max_open=True,
                                     note="0 = ground truth only", metavar="P")
    model_overrides: dict[str, Any] = option({}, "ModelConfig fields over the preset (--model-opt)")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_fields(self, where="train config")
        if self.wsd_decay and self.cosine:
            raise CtfgenError("train config: cosine and wsd_decay are two schedules; choose one")
        if self.aux_coarse_noise and not KINDS[self.kind].member_head:
            raise CtfgenError(f"train config: aux_coarse_noise applies to kind 'aux' only, not {self.kind!r}")

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
        """Learning rate for optimizer step `step` (0-based) of a run of `total` steps: linear warm-up,
        then constant, cosine, or constant with a linear decay over its last `wsd_decay` fraction."""
        peak = self.peak_lr
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        if self.wsd_decay:
            span = max(1, round(total * self.wsd_decay))
            left = total - step  # steps still to take, this one included: the last step runs at the floor
            floor = peak * self.min_lr_ratio
            return peak if left > span else floor + (peak - floor) * (left - 1) / span
        if not self.cosine:
            return peak
        floor = peak * self.min_lr_ratio  # reached at the last step, total - 1 (cosine_progress)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * cosine_progress(step, self.warmup_steps, total)))


@dataclass
class RunOptions:
    """How a training run is executed; may change between invocations of the same run. Documented
    and checked like TrainConfig."""

    # under torchrun, CUDA ranks use cuda:LOCAL_RANK
    device: str = option("auto", "cpu, cuda, cuda:N or auto; bf16 autocast on CUDA, fp32 on CPU")
    grad_accum: int = option(1, "micro-steps per optimizer step on each process", min=1)
    log_every: int = option(50, "steps between metric records", min=1)
    ckpt_every: int | None = option(None, "steps between checkpoints (default: a tenth of the run, at most 1000)",
                                    min=0, note="0 = only at the end")  # None: auto_ckpt_every
    stop_after: int = option(0, "checkpoint and stop once STEP steps are done (for time-limited jobs); rerun to "
                                "continue", min=0, note="0 = run to the end", metavar="STEP")
    fsdp: bool = option(False, "shard weights and optimizer state across GPUs (under torchrun)")
    compile: bool = option(False, "torch.compile the model")
    progress: bool = option(True, "tqdm progress bar on rank 0")
    # live logs on rank 0, beside metrics.jsonl (`--log-to tensorboard`, `--log-to wandb`)
    tensorboard: bool = option(False, "TensorBoard event files in out/tensorboard (needs the tensorboard package)")
    wandb: bool = option(False, "Weights & Biases in offline mode, files in out/wandb (needs the wandb package)")
    precision: str = option("auto", "auto: bf16 autocast on CUDA, fp32 on a CPU; bf16: autocast on any device; "
                                    "fp32: none", choices=PRECISIONS)
    aux_loss: str = option("auto", "how the cluster-masked loss is computed, same result (docs/GPU.md); auto: masked "
                                   "on a GPU, on a CPU gather for equal-size clusters and loop otherwise",
                           choices=AUX_LOSSES)  # models/member_loss.py

    def __post_init__(self) -> None:
        check_fields(self, where="run options")
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
