"""The tokenizer's own parts of its training: the learning-rate schedule, the batch stream and the
dead-code restarts. The run itself is a task of the one Trainer (train/tokenizer_task.py:
TokenizerTask, `train_tokenizer`, which this module still exports for its callers).

Dead codes are the usual failure of VQ with a large codebook: most codewords never win the
nearest-neighbour lookup and so never receive a gradient. Every `restart_every` steps, codewords
unused since the last check are moved onto encoder outputs of the current batch, which keeps the
whole codebook in play (the coarse-to-fine method needs a large, fully used codebook).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import run_state
from ..lazy import lazy_attributes
from .config import TokenizerTrainConfig
from .model import VQModel

seed_all = run_state.seed_all  # the training run's seeding, named here for the tokenizer's own callers

__all__ = ["TokenizerTrainConfig", "train_tokenizer", "restart_dead_codes", "BatchStream", "seed_all"]
# the run needs the Trainer, a stage above this package (docs/ARCHITECTURE.md: layers): loaded on first use
__getattr__ = lazy_attributes(__name__, {"train_tokenizer": "..train.tokenizer_task"})


@torch.no_grad()
def restart_dead_codes(model: VQModel, usage_V: torch.Tensor, z_BDHW: torch.Tensor, gen: torch.Generator) -> int:
    dead_N = (usage_V == 0).nonzero().flatten()
    if not len(dead_N):
        return 0
    z_MD = F.normalize(z_BDHW, dim=1).permute(0, 2, 3, 1).reshape(-1, z_BDHW.shape[1])
    pick_ND = z_MD[torch.randint(0, len(z_MD), (len(dead_N),), generator=gen, device="cpu").to(z_MD.device)]
    # A little noise so that several restarted codes drawn from one output do not stay identical.
    noise = torch.randn(pick_ND.shape, generator=gen, device="cpu").to(pick_ND.device)
    model.quantize.embedding.weight[dead_N.to(pick_ND.device)] = F.normalize(pick_ND + 0.01 * noise, dim=-1)
    return len(dead_N)


def _lr_factor(step: int, cfg: TokenizerTrainConfig) -> float:
    """Linear warm-up, then cosine decay: the low-lr end of a run adds a good part of its PSNR."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = run_state.cosine_progress(step, cfg.warmup_steps, cfg.steps)  # 1 at the last step: the floor is reached
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class BatchStream:
    """Shuffled batches, epoch after epoch; the state (current permutation, position) is saved in
    checkpoints so a resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx
