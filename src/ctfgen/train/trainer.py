"""The training loop shared by the baseline, stage 1 (ar) and stage 2 (aux).

Runs as one process (CPU or GPU) or under torchrun (DDP, or FSDP with `fsdp=True`). Running the same
call again with the same out_dir resumes from the last checkpoint, exactly: model, optimizer, EMA,
step (which fixes the learning rate and the data order) and every RNG are restored, so an
interrupted run ends with the same weights as an uninterrupted one (same device, ranks and
grad_accum). Only rank 0 writes; on resume every rank reads the checkpoint, so multi-node runs need
the out folder on a shared filesystem.

A diverged run stops: a non-finite loss or gradient norm (checked at every log record and before
every checkpoint, without a per-step GPU synchronisation) raises TrainingDiverged naming the step,
and no checkpoint of the diverged weights is written, so the last good one stays the one that resumes.

`train()` runs one `Trainer`, whose methods are the steps of a run (build, `train_step`, `fit`,
`log_metrics`, `save`); checkpoint_manager.py decides on resuming and writes checkpoints,
logs.py keeps the metric window and records, parallel.py wraps the model for DDP / FSDP.
"""
from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..config import to_dict
from ..dist import DistInfo, all_reduce_mean, all_reduce_sum, init_distributed, no_sync, shutdown
from ..errors import CtfgenError, TrainingDiverged
from ..memory import lifetime_peak_rss_bytes
from ..models.artifact import model_config_dict
from ..models.config import KINDS
from ..progress import progress_bar
from .checkpoint_manager import CheckpointManager
from .config import RunOptions, TrainConfig, auto_ckpt_every
from .data import BatchOrder, TokenDataset, check_inputs
from .logs import MetricsLog, MetricsWindow
from .parallel import EMA, param_groups, wrap


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    finished: bool
    resumed_from: int  # step the run started at (0: fresh)
    records: list[dict[str, Any]] = field(default_factory=list)


def build_for(cfg: TrainConfig, codes, coarse, build_model: Callable | None = None) -> torch.nn.Module:
    if build_model is None:
        from ..models import build_model
    kind = KINDS[cfg.kind]
    kwargs: dict[str, Any] = dict(vocab_size=codes.vocab_size, num_classes=codes.num_classes, grid=codes.grid[0])
    if kind.needs_coarse_map:
        kwargs["coarse_vocab"] = coarse.k
    if kind.member_head:
        kwargs["code_to_coarse"] = coarse.code_to_coarse
    overrides = dict(cfg.model_overrides)
    if cfg.aux_coarse_noise:
        overrides["coarse_noise"] = cfg.aux_coarse_noise
    return build_model(cfg.kind, cfg.preset, **kwargs, **overrides)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train(
    cfg: TrainConfig,
    *,
    codes_dir: str | Path,
    out_dir: str | Path,
    coarse_map_dir: str | Path | None = None,
    run: RunOptions | None = None,
    build_model: Callable[..., torch.nn.Module] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume) one model; see TrainConfig and RunOptions. `on_step(done)` runs after each
    optimizer step (tests use it to simulate a crash); `build_model` replaces ctfgen.models.build_model."""
    run = run or RunOptions()
    owns_group = not torch.distributed.is_initialized()
    info = init_distributed(run.device)
    try:
        trainer = Trainer(cfg, run, info, Path(out_dir), codes_dir=Path(codes_dir), coarse_map_dir=coarse_map_dir,
                          build_model=build_model)
        return trainer.fit(on_step)
    finally:
        if owns_group:
            shutdown(info)


class Trainer:
    """One run: constructing it builds the model, decides whether `out` resumes and restores it,
    wraps the model (DDP / FSDP) and makes the optimizer and EMA; `fit()` then runs `train_step` for
    each remaining step, writing a metrics record every run.log_every steps (`log_metrics`) and a
    checkpoint every ckpt_every (`save`). Every rank runs the same calls."""

    def __init__(self, cfg: TrainConfig, run: RunOptions, dist: DistInfo, out: Path, *, codes_dir: Path,
                 coarse_map_dir: str | Path | None = None, build_model: Callable[..., torch.nn.Module] | None = None):
        if run.fsdp and dist.world_size == 1 and not torch.distributed.is_initialized():
            raise CtfgenError("--fsdp needs a distributed launch (torchrun --nproc_per_node N ...)")
        self.cfg, self.run, self.dist, self.out = cfg, run, dist, out
        codes, coarse = self.open_inputs(codes_dir, coarse_map_dir)

        self.order = BatchOrder(len(codes.labels), cfg.batch_size, seed=cfg.seed)
        self.order.micro_batch(0, world_size=dist.world_size, grad_accum=run.grad_accum)  # check the split early
        self.total = cfg.total_steps(self.order.steps_per_epoch)
        self.dataset = TokenDataset(codes.codes, codes.labels, seed=cfg.seed,
                                    code_to_coarse=None if coarse is None else coarse.code_to_coarse)

        _seed_all(cfg.seed)  # identical initial weights on every rank
        self.model = build_for(cfg, codes, coarse, build_model)
        # the initial weights (the same on a resume: same seed), to measure how far the EMA has moved
        self.ema_init = ({n: p.detach().float().cpu().clone() for n, p in self.model.named_parameters()
                          if p.dtype.is_floating_point} if cfg.ema else None)
        # stage 2's coarse noise (--aux-coarse-noise or --model-opt coarse_noise=P): draws per sample
        self.dataset.coarse_draws = getattr(self.model.config, "coarse_noise", 0.0) > 0
        if hasattr(self.model, "loss_impl"):  # stage 2: how the cluster-masked loss is computed
            self.model.loss_impl = run.aux_loss
        config = {"model": model_config_dict(self.model), "train": to_dict(cfg), "model_kind": cfg.kind}
        made_from = {"codes": codes.fingerprint, "tokenizer": codes.tokenizer_fingerprint}
        if coarse is not None:
            made_from["coarse_map"] = coarse.fingerprint
        self.checkpoints = CheckpointManager(out, dist, config=config, made_from=made_from, fsdp=run.fsdp)
        resume = self.checkpoints.read()

        self.parallelize(resume["model"] if resume is not None else None)
        self.log = MetricsLog(out, enabled=dist.is_main, tensorboard=run.tensorboard, wandb=run.wandb,
                              run_config={**config, "made_from": made_from})
        self.start = self.restore(resume)

        self.seq_tokens = cfg.batch_size * self.dataset.seq_len
        self.autocast = run.autocast(dist.device)
        self.window = MetricsWindow(dist.device)
        self.step_stats: list[torch.Tensor] = []  # (loss, grad norm) of each step since the last divergence check
        self.lr = math.nan  # of the last step
        self.out_vocab = getattr(self.model.config, "out_vocab", 0)
        self.uniform_loss = math.log(self.out_vocab) if self.out_vocab else math.inf  # the zero-initialised head's loss
        self.warnings: list[str] = []  # recorded in the manifest

    # ------------------------------------------------------------ building

    def open_inputs(self, codes_dir: Path, coarse_map_dir: str | Path | None) -> tuple[Any, Any]:
        """The code store and the coarse map (None for the baseline, which never looks at coarse
        labels), checked against each other and the model kind."""
        from ..cluster import CoarseMap
        from ..codes import CodeStore

        codes = CodeStore.open(codes_dir)
        coarse = CoarseMap.load(coarse_map_dir) if coarse_map_dir is not None else None
        check_inputs(self.cfg.kind, codes, coarse, codes_dir=str(codes_dir), coarse_dir=str(coarse_map_dir))
        return codes, (coarse if KINDS[self.cfg.kind].needs_coarse_map else None)

    def parallelize(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Move the model to the device (with the checkpoint's `weights`), compile it when asked,
        wrap it for DDP / FSDP (self.wrapped: called for the loss) and make the optimizer and EMA over
        self.opt_model (FSDP replaces parameters, so they are named after wrapping)."""
        cfg, run = self.cfg, self.run
        self.model.to(self.dist.device)
        if weights is not None:
            self.model.load_state_dict(weights, strict=True)
        if run.compile:
            self.model.compile()
        self.wrapped = wrap(self.model, self.dist, fsdp=run.fsdp)
        self.opt_model = self.wrapped.model if run.fsdp else self.model
        self.optimizer = torch.optim.AdamW(param_groups(self.opt_model, cfg.weight_decay), lr=cfg.peak_lr,
                                           betas=(cfg.beta1, cfg.beta2))
        self.ema = EMA(self.opt_model, cfg.ema) if cfg.ema else None
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]

    def restore(self, resume: dict | None) -> int:
        """The step to start from, with the optimizer, EMA, RNG and metric records of `resume`
        restored (or a fresh start's seeds)."""
        if resume is None:
            self.log.reset()
            _seed_all(self.cfg.seed + self.dist.rank)  # different dropout on each rank
            return 0
        start = int(resume["state"]["step"])
        if not self.checkpoints.restore(resume, self.opt_model, self.optimizer, self.ema):
            _seed_all(self.cfg.seed + 1000003 * start + self.dist.rank)
        self.log.resume(start)
        return start

    # ------------------------------------------------------------ the loop

    def fit(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        """Train from self.start to the schedule's end (or run.stop_after); `on_step(done)` after each step."""
        run, total = self.run, self.total
        if self.start >= total:
            if self.dist.is_main:
                print(f"{self.out}: already trained ({self.start}/{total} steps); nothing to do")
            return TrainResult(self.out, self.start, total, True, self.start, self.log.records)
        stop = min(total, run.stop_after) if run.stop_after else total
        ckpt_every = auto_ckpt_every(total) if run.ckpt_every is None else run.ckpt_every
        bar = progress_bar(total=stop, initial=self.start, show=(run.progress and self.dist.is_main),
                   desc=f"train {self.cfg.kind}", unit="step", dynamic_ncols=True)
        self.window.reset()
        done = self.start
        for step in range(self.start, stop):
            self.train_step(step)
            done = step + 1
            bar.update(1)
            if done % run.log_every == 0 or done == stop:
                rec = self.log_metrics(done)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.3g}")
            if done == stop or (ckpt_every and done % ckpt_every == 0):
                with self.window.paused():  # checkpoint time stays out of tokens/s
                    self.save(done)
            if on_step is not None:
                on_step(done)
        bar.close()
        self.log.close()
        return TrainResult(self.out, done, total, done >= total, self.start, self.log.records)

    def train_step(self, step: int) -> None:
        """Optimizer step `step` (from 0): this rank's share of the global batch in run.grad_accum
        micro-batches (gradients all-reduced once, on the last), clipping, AdamW, EMA. The loss and
        metrics stay on the device, in self.window and self.step_stats.

        Each micro-batch's loss is a sum over the positions it counts, divided by the count of the
        whole global batch (all micro-batches of all ranks, gathered before the first forward): the
        step's loss is the mean over every counted position of the global batch, however it is split,
        also when a micro-batch counts fewer positions than another (stage 2's coarse noise)."""
        run, dev = self.run, self.dist.device
        epoch, _ = self.order.position(step)
        self.dataset.set_epoch(epoch)
        self.lr = self.cfg.lr_at(step, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.wrapped.train()
        batches = []
        for micro in range(run.grad_accum):
            idx = self.order.micro_batch(step, rank=self.dist.rank, world_size=self.dist.world_size, micro=micro,
                                         grad_accum=run.grad_accum)
            batches.append({k: v.to(dev, non_blocking=True) for k, v in self.dataset.batch(idx, step).items()})
        with torch.no_grad():
            count = torch.stack([self.model.counted_positions(b).sum() for b in batches]).sum().double()
        # DDP and FSDP average the ranks' gradients: dividing each rank's sum by count / world_size
        # makes that average the global sum over the global count
        per_rank = all_reduce_sum(count, self.dist).clamp(min=1) / self.dist.world_size
        step_loss = torch.zeros((), device=dev)
        for micro, batch in enumerate(batches):
            with no_sync(self.wrapped, micro < run.grad_accum - 1), self.autocast:
                loss_sum, metrics = self.wrapped(batch)
            share = loss_sum / per_rank.to(loss_sum.dtype)
            share.backward()
            step_loss += share.detach().float()
            self.window.add_micro_step(share, metrics, run.grad_accum)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.window.add_step(norm)
        self.step_stats.append(torch.stack([step_loss, norm.detach().float()]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.opt_model, step)

    # ------------------------------------------------------------ records, checks, checkpoints

    def log_metrics(self, done: int) -> dict[str, Any]:
        """Check for divergence, write the record of the steps since the last one (means over steps and
        ranks) and start a new window. Metrics measured at log time (a validation loss) go here."""
        self.stop_if_diverged(done)
        means, grad_norm, elapsed = self.window.means(self.dist)
        rec = {"step": done, "epoch": round(done / self.order.steps_per_epoch, 4), **means,
               "lr": self.lr, "grad_norm": grad_norm, "tokens_per_s": self.window.steps * self.seq_tokens / elapsed}
        if self.dist.device.type == "cuda":
            rec["max_mem_gb"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        else:
            rec["max_rss_gb"] = lifetime_peak_rss_bytes() / 2**30
        self.log.write(rec)
        if rec["loss"] > self.uniform_loss + 1.0 and not self.warnings and self.dist.is_main:
            self.warnings.append(f"step {done}: loss {rec['loss']:.4g} is above a uniform guess "
                                 f"(ln {self.out_vocab} = {self.uniform_loss:.3f}): the run is probably diverging; "
                                 "a lower --lr may help")
            tqdm.write(f"warning: {self.warnings[-1]}", file=sys.stderr)
        self.window.reset()
        return rec

    def stop_if_diverged(self, done: int, *, weights: bool = False) -> None:
        """Raise TrainingDiverged (on every rank) when a step since the last check had a non-finite
        loss or gradient norm, or (weights=True) when a weight is no longer finite."""
        stats = torch.stack(self.step_stats) if self.step_stats else torch.zeros(0, 2, device=self.dist.device)
        bad = (~torch.isfinite(stats)).any(-1).double()
        if weights:
            local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in self.params]  # FSDP shards
            finite = torch.stack([torch.isfinite(t).all() for t in local]).all()
            bad = torch.cat([bad, (~finite).double().reshape(1)])
        first = len(self.step_stats)
        flags = all_reduce_mean(torch.cat([bad, stats.double().flatten()]), self.dist).cpu()
        self.step_stats = []
        n = len(bad)
        hit = (flags[:n] > 0).nonzero().flatten().tolist()
        if not hit:
            return
        if hit[0] < first:
            at = done - first + 1 + hit[0]
            loss, norm = flags[n + 2 * hit[0]:n + 2 * hit[0] + 2].tolist()
            what = f"at step {at}: loss {loss:.4g}, gradient norm {norm:.4g} (not finite)"
        else:
            what = f"by step {done}: the weights hold NaN or infinite values"
        last = self.checkpoints.last_saved
        kept = (f"{self.out} keeps the last good checkpoint (step {last}), which a rerun resumes from"
                if last else f"no checkpoint was written to {self.out}")
        raise TrainingDiverged(
            f"training diverged {what}; stopped without saving. {kept}, but the same settings diverge again: "
            f"train with a lower --lr (now {self.cfg.lr:g}), a warm-up (--warmup) or gradient clipping (--grad-clip) "
            "into a new --out")

    def save(self, done: int) -> None:
        """Check the weights, then checkpoint step `done` (every rank takes part; rank 0 writes)."""
        self.stop_if_diverged(done, weights=True)
        epoch, batch_in_epoch = self.order.position(done)
        state = {"step": done, "total_steps": self.total, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "world_size": self.dist.world_size, "grad_accum": self.run.grad_accum}
        records = self.log.records
        info = {"step": done, "total_steps": self.total, "finished": done >= self.total,
                "epochs": done / self.order.steps_per_epoch, "tokens_seen": done * self.seq_tokens,
                "ema": self.cfg.ema, "last": records[-1] if records else {},
                **({"warnings": list(self.warnings)} if self.warnings else {})}
        self.checkpoints.save(
            done, self.opt_model, self.optimizer, self.ema, ema_init=self.ema_init, state=state, info=info,
            extra_files=lambda tmp: self.log.plot(tmp / "loss_curve.png", title=f"{self.cfg.kind} {self.cfg.preset}"),
            before_commit=self.log.close)
