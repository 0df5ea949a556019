"""Training throughput of stage 1 (ar, K coarse labels) and stage 2 (aux) against the baseline.

The three models are built at the same preset and trained on random codes in one process, one step
of each in turn (`Trainer.train_step`, the step `ctfgen train` runs, over a fixed batch), so drifts
in machine load hit all alike. Stage 1 and the baseline differ only in the vocabulary of the input
embedding and the output head (K vs V), which is where CTF saves compute; stage 2 (bidirectional,
scoring only each position's cluster members) is CTF's second model, so CTF's training cost is the
sum of the first two rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, asdict

import torch

from ..memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from ..train.trainer import Trainer


@dataclass
class BenchRow:
    kind: str
    vocab_in: int
    vocab_out: int
    params: int
    tokens_per_s: float
    step_ms: float  # median
    static_mb: float  # weights + gradients + AdamW moments (fp32)
    step_peak_mb: float  # extra memory of one step: CUDA max allocated / CPU peak-RSS delta (NaN if unknown)


class _Runner:
    def __init__(self, kind: str, preset: str, *, vocab: int, k: int, grid: int, num_classes: int,
                 device: torch.device, batch: dict[str, torch.Tensor], lr: float = 1e-4):
        from ..models import build_model
        from ..models.config import KINDS

        self.kind, self.device = kind, device
        kwargs = dict(vocab_size=vocab, num_classes=num_classes, grid=grid)
        if KINDS[kind].needs_coarse_map:
            kwargs["coarse_vocab"] = k
        if KINDS[kind].member_head:  # the clustering the batches use: code % k
            kwargs["code_to_coarse"] = torch.arange(vocab) % k
        self.model = build_model(kind, preset, **kwargs).to(device).train()
        # the step `ctfgen train` runs (bf16 autocast on CUDA, AdamW, clipping), on the fixed batch
        self.trainer = Trainer.for_bench(self.model, batch, device=device, lr=lr)
        self.times: list[float] = []
        self.peaks: list[float] = []
        cfg = self.model.config
        self.vocab_in, self.vocab_out = cfg.in_vocab, cfg.out_vocab
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self, step: int, *, record: bool) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            rss_ok = reset_peak_rss()
            before = rss_bytes()
        t0 = time.perf_counter()
        self.trainer.train_step(step)
        if cuda:
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        if not record:
            return
        self.times.append(elapsed)
        if cuda:
            self.peaks.append((torch.cuda.max_memory_allocated(self.device) - before) / 2**20)
        else:
            peak = peak_rss_bytes()
            self.peaks.append((peak - before) / 2**20 if rss_ok and peak is not None and before is not None
                              else float("nan"))


def bench_train(*, preset: str = "tiny", vocab: int = 4096, k: int = 128, grid: int = 8, batch_size: int = 32,
                steps: int = 20, warmup: int = 3, num_classes: int = 1000, device: str | torch.device = "cpu",
                seed: int = 0, progress: bool = True) -> list[BenchRow]:
    """Alternate training steps of the ar, aux and baseline models; one BenchRow each, in that order."""
    from ..progress import progress_bar

    device = torch.device(device)
    torch.manual_seed(seed)
    L = grid * grid
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, vocab, (batch_size, L), generator=g)
    batch = {"codes": codes.to(device), "coarse": (codes % k).to(device),
             "label": torch.randint(0, num_classes, (batch_size,), generator=g).to(device)}
    runners = [_Runner(kind, preset, vocab=vocab, k=k, grid=grid, num_classes=num_classes, device=device, batch=batch)
               for kind in ("ar", "aux", "baseline")]
    for i in progress_bar(range(warmup + steps), desc="bench train", show=progress):
        # swap the order every round so neither model always runs right after the other's step
        for r in (runners if i % 2 == 0 else runners[::-1]):
            r.step(i, record=i >= warmup)
    rows = []
    for r in runners:
        times = sorted(r.times)
        median = times[len(times) // 2]
        static = sum(p.numel() * p.element_size() for p in r.model.parameters()) * 4 / 2**20  # w, grad, 2 moments
        peaks = [p for p in r.peaks if p == p]
        rows.append(BenchRow(r.kind, r.vocab_in, r.vocab_out, r.params, batch_size * L * len(times) / sum(times),
                             median * 1e3, static, max(peaks) if peaks else float("nan")))
    return rows


def rows_to_json(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
