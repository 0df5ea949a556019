"""The three formulations of stage 2's loss (models/member_loss.py) timed against each other on one
model, for the head alone and for a whole training step (`ctfgen bench aux-loss`, apps/cli/bench.py).

Head alone: random final hidden states (N = batch * tokens, D) with gradients, the loss forward and
backward. Whole step: the trainer's step (`Trainer.train_step`: the loss, backward, gradient
clipping, an AdamW step) on one fixed batch. Formulations alternate
within each round so that drifts in machine load hit all alike; the median is reported.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from ..models.member_loss import IMPLS
from ..train.trainer import Trainer


@dataclass
class AuxLossRow:
    impl: str
    head_ms: float  # median forward + backward of the loss alone
    step_ms: float  # median whole training step (NaN when not measured)
    peak_mb: float  # CUDA: max allocated during the head timing (NaN on a CPU)
    loss: float  # the loss of the first head call: equal across formulations
    max_cluster: int  # M, the largest cluster (gather's block width); the mean is vocab / k


def cluster_labels(vocab: int, k: int, shape: str, g: torch.Generator) -> torch.Tensor:
    """(vocab,) random cluster labels, every cluster non-empty."""
    if shape == "balanced":
        return torch.randperm(vocab, generator=g) % k
    if shape != "skewed":
        from ..errors import CtfgenError

        raise CtfgenError(f"clusters must be 'balanced' or 'skewed', got {shape!r}")
    weights_K = torch.exp(0.35 * torch.randn(k, generator=g))  # log-normal cluster popularity
    labels = torch.cat([torch.arange(k), torch.multinomial(weights_K, vocab - k, replacement=True, generator=g)])
    return labels[torch.randperm(vocab, generator=g)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, call: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of call(), the device synchronised before and after."""
    _sync(device)
    t0 = time.perf_counter()
    out = call()
    _sync(device)
    return time.perf_counter() - t0, out


def bench_aux_loss(*, preset: str = "aux-L", vocab: int = 16384, k: int = 512, grid: int = 16,
                   batch_size: int = 2, steps: int = 3, warmup: int = 1, whole_step: bool = True,
                   num_classes: int = 1000, device: str | torch.device = "cpu", seed: int = 0,
                   clusters: str = "balanced", impls: tuple[str, ...] = IMPLS) -> list[AuxLossRow]:
    """One AuxLossRow per formulation, in `impls` order. bf16 autocast on CUDA, as the trainer.

    clusters: "balanced" (vocab / k codes each) or "skewed" (uneven sizes, largest ~3x the mean,
    like k-means on a trained codebook: docs/CLUSTERING.md), which is what the gather pays for."""
    from ..models import build_model

    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    c2c = cluster_labels(vocab, k, clusters, g)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it runs: an L-size model is slow to fill on a CPU
        model = build_model("aux", preset, vocab_size=vocab, num_classes=num_classes, grid=grid, coarse_vocab=k,
                            code_to_coarse=c2c)
    model.train()
    torch.nn.init.normal_(model.output.weight, std=0.02)
    L = grid * grid
    codes = torch.randint(0, vocab, (batch_size, L), generator=g).to(device)
    batch = {"codes": codes, "coarse": model.code_to_coarse[codes],
             "label": torch.randint(0, num_classes, (batch_size,), generator=g).to(device)}
    trainer = Trainer.for_bench(model, batch, device=device, lr=1e-6) if whole_step else None
    D = model.config.dim
    h_ND = torch.randn(batch_size * L, D, generator=g).to(device).requires_grad_()
    coarse_N, codes_N = batch["coarse"].flatten(), codes.flatten()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())

    def head_pass(impl: str) -> torch.Tensor:
        with autocast:
            loss, _ = model.member_loss(h_ND, coarse_N, codes_N, impl=impl)
        loss.backward()
        return loss

    head = {i: [] for i in impls}
    step = {i: [] for i in impls}
    peak = dict.fromkeys(impls, float("nan"))
    first_loss: dict[str, float] = {}
    for r in range(warmup + steps):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            dt, loss = _timed(device, lambda: head_pass(impl))
            h_ND.grad = None
            model.zero_grad(set_to_none=True)
            first_loss.setdefault(impl, float(loss.detach()))
            if device.type == "cuda":
                peak[impl] = torch.cuda.max_memory_allocated(device) / 2**20
            if r >= warmup:
                head[impl].append(dt)
            if whole_step:
                model.loss_impl = impl  # over the trainer's --aux-loss
                dt, _ = _timed(device, lambda: trainer.train_step(r))
                if r >= warmup:
                    step[impl].append(dt)
    M = int(torch.bincount(c2c, minlength=k).max())
    return [AuxLossRow(i, 1e3 * statistics.median(head[i]),
                       1e3 * statistics.median(step[i]) if step[i] else float("nan"), peak[i], first_loss[i], M)
            for i in impls]


def aux_rows_to_json(rows: list[AuxLossRow]) -> list[dict]:
    return [asdict(r) for r in rows]
