"""Training-step speed of stage 1, stage 2 and the baseline: tokens/s, step time, peak memory, MFU.

Each model is built on the device with random codes as data and runs the trainer's own step
(`Trainer.train_step`: bf16 autocast, AdamW with LlamaGen's betas, gradient clipping) for `warmup`
untimed and `steps` timed steps, one model after another (a GPU has no neighbours to share load with).
"""
from __future__ import annotations

import statistics
import time

import torch

from ...models.config import KINDS
from .flops import mfu, train_flops_per_token

IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's train split: an epoch is one view of each


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(kind: str, preset: str, *, vocab: int, k: int, grid: int, num_classes: int, batch_size: int,
                  steps: int, warmup: int, device: torch.device, peak_tflops: float | None,
                  precision: str = "bf16", aux_loss: str = "auto", seed: int = 0, profile: bool = False) -> dict:
    """Median step time etc. of `steps` steps after `warmup`; with `profile`, one more step under
    torch.profiler (gpucheck.sampling.profile_call: device-busy share and the top ops)."""
    from ...models import build_model
    from ...memory import peak_rss_bytes, reset_peak_rss
    from ...train.trainer import Trainer

    spec = KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(vocab_size=vocab, num_classes=num_classes, grid=grid)
    if spec.needs_coarse_map:
        kwargs["coarse_vocab"] = k
    if spec.member_head:
        kwargs["code_to_coarse"] = torch.randperm(vocab, generator=g) % k
    torch.manual_seed(seed)
    with torch.device(device):
        model = build_model(kind, preset, **kwargs)
    model.train()
    L = grid * grid
    codes = torch.randint(0, vocab, (batch_size, L), generator=g)
    batch = {"codes": codes.to(device), "label": torch.randint(0, num_classes, (batch_size,), generator=g).to(device)}
    if spec.needs_coarse_map:
        c2c = model.code_to_coarse.cpu() if spec.member_head else torch.arange(vocab) % k
        batch["coarse"] = c2c[codes].to(device)
    trainer = Trainer.for_bench(model, batch, device=device, precision=precision, aux_loss=aux_loss)
    steps_done = iter(range(10**9))

    def step():
        return trainer.train_step(next(steps_done))

    times = []
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            else:
                reset_peak_rss()
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        hwm = peak_rss_bytes()
        peak_gib = hwm / 2**30 if hwm is not None else float("nan")
    step_s = statistics.median(times)
    tokens = batch_size * L
    per_token = train_flops_per_token(model.config)
    tokens_per_s = tokens / step_s
    out = {"kind": kind, "preset": preset, "params": model.num_params(), "vocab_out": model.config.out_vocab,
           "batch_size": batch_size, "tokens_per_step": tokens, "precision": precision,
           "aux_loss": getattr(model, "last_loss_impl", None), "step_ms": 1e3 * step_s,
           "step_ms_all": [1e3 * t for t in times], "tokens_per_s": tokens_per_s,
           "peak_mem_gib": peak_gib, "model_tflop_per_step": per_token * tokens / 1e12,
           "achieved_tflops": per_token * tokens_per_s / 1e12,
           "mfu": mfu(tokens_per_s, per_token, peak_tflops), "loss": float(loss.detach()),
           "imagenet_epoch_hours": IMAGENET_TRAIN * L / tokens_per_s / 3600}
    if profile:
        from .sampling import profile_call

        out["profile"] = profile_call(step, device)
    del model, trainer
    return out


def format_training(rows: list[dict]) -> list[str]:
    lines = ["| model | preset | params | batch x tokens | step ms | tokens/s | peak memory GiB | TFLOP/s | MFU | "
             "ImageNet epoch, h |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["kind"] + (f" ({r['aux_loss']} loss)" if KINDS[r["kind"]].member_head else "")
        mfu_s = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {name} | {r['preset']} | {r['params'] / 1e6:.1f}M | {r['batch_size']} x "
                     f"{r['tokens_per_step'] // r['batch_size']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_mem_gib']:.2f} | {r['achieved_tflops']:.1f} | {mfu_s} | "
                     f"{r['imagenet_epoch_hours']:.2f} |")
    return lines
