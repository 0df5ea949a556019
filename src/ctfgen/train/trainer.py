"""The one training loop: the baseline, stage 1 (ar) and stage 2 (aux) (train/model_task.py) and the
tokenizer (train/tokenizer_task.py), each a task (train/task.py) that the Trainer runs.

Runs as one process (CPU or GPU) or under torchrun (DDP, or FSDP with `fsdp=True`). Running the same
call again with the same out_dir resumes from the last checkpoint, exactly: model, optimizer, EMA,
step (which fixes the learning rate and the data order), the task's own state and every RNG are
restored, so an interrupted run ends with the same weights as an uninterrupted one (same device,
ranks and grad_accum). Only rank 0 writes; on resume every rank reads the checkpoint, so multi-node
runs need the out folder on a shared filesystem.

A diverged run stops: a non-finite loss or gradient norm (checked at every log record and before
every checkpoint, without a per-step GPU synchronisation) raises TrainingDiverged naming the step,
and no checkpoint of the diverged weights is written, so the last good one stays the one that resumes.

`train()` runs one `Trainer` over a ModelTask, whose methods are the steps of a run (build,
`train_step`, `fit`, `log_metrics`, `save`); checkpoint_manager.py decides on resuming and writes
checkpoints, logs.py keeps the metric window and records, parallel.py wraps the model for DDP / FSDP.
The benchmarks time `train_step` itself (`Trainer.for_bench`).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..dist import DistInfo, all_reduce_mean, all_reduce_sum, init_distributed, leaving_group, no_sync
from ..errors import CtfgenError, TrainingDiverged
from ..memory import lifetime_peak_rss_bytes
from ..progress import progress_bar
from .checkpoint_manager import CheckpointManager
from .config import RunOptions, TrainConfig, auto_ckpt_every
from .logs import MetricsLog, MetricsWindow
from .model_task import BenchTask, ModelTask
from .parallel import EMA, wrap
from .task import TrainTask


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    finished: bool
    resumed_from: int  # step the run started at (0: fresh)
    records: list[dict[str, Any]] = field(default_factory=list)


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
    with leaving_group(info, owns=owns_group):
        task = ModelTask(cfg, run, info, codes_dir=Path(codes_dir), coarse_map_dir=coarse_map_dir,
                         build_model=build_model)
        return Trainer(task, run, info, Path(out_dir)).fit(on_step)


class Trainer:
    """One run of `task` (train/task.py): constructing it builds the task's model, decides whether
    `out` resumes and restores it, wraps the model (DDP / FSDP) and makes the optimizer and EMA;
    `fit()` then runs `train_step` for each remaining step, writing a metrics record every
    run.log_every steps (`log_metrics`) and a checkpoint every ckpt_every (`save`). Every rank runs
    the same calls. Without `out` (for_bench) there is no run folder: only `train_step` is called."""

    def __init__(self, task: TrainTask, run: RunOptions, dist: DistInfo, out: Path | None):
        if run.fsdp and dist.world_size == 1 and not torch.distributed.is_initialized():
            raise CtfgenError("--fsdp needs a distributed launch (torchrun --nproc_per_node N ...)")
        self.task, self.run, self.dist, self.out = task, run, dist, out
        self.total = task.total
        self.model = task.build()
        # the initial weights (the same on a resume: same seed), to measure how far the EMA has moved
        self.ema_init = ({n: p.detach().float().cpu().clone() for n, p in self.model.named_parameters()
                          if p.dtype.is_floating_point} if task.ema else None)
        self.checkpoints = resume = None
        if out is not None:
            self.checkpoints = CheckpointManager(out, dist, format=task.format, fsdp=run.fsdp)
            resume = self.checkpoints.read([n for n, _ in self.model.named_parameters()])

        self.parallelize(resume["model"] if resume is not None else None)
        self.log = MetricsLog(out or Path("."), enabled=dist.is_main and out is not None, tensorboard=run.tensorboard,
                              wandb=run.wandb, run_config={**task.config, "made_from": task.made_from})
        self.start = self.restore(resume)
        self.seconds_before = float(resume["state"].get("seconds", 0.0)) if resume is not None else 0.0
        self.t0 = time.time()

        self.autocast = run.autocast(dist.device)
        self.window = MetricsWindow(dist.device)
        # (loss, grad norm, the task's extra check) of each step since the last divergence check
        self.step_stats: list[torch.Tensor] = []
        self.lr = math.nan  # of the last step
        self.warnings: list[str] = []  # recorded in the manifest

    @classmethod
    def for_bench(cls, model: torch.nn.Module, batch: dict[str, torch.Tensor], *, device: str | torch.device,
                  precision: str = "auto", aux_loss: str = "auto", lr: float = 1e-4, weight_decay: float = 0.05,
                  grad_clip: float = 1.0) -> "Trainer":
        """A Trainer over `model` (built on `device`) whose every step trains on `batch` (on `device`)
        at a constant `lr`, with no run folder: the benchmarks time its `train_step`, the step that
        `ctfgen train` runs (grad_clip 0: the gradient norm is measured, not clipped)."""
        run = RunOptions(device=str(device), precision=precision, aux_loss=aux_loss, progress=False)
        task = BenchTask(model, batch, run, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip)
        return cls(task, run, DistInfo(device=torch.device(device)), None)

    # ------------------------------------------------------------ building

    def parallelize(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Move the model to the device (with the checkpoint's `weights`), compile it when asked,
        wrap it for DDP / FSDP (self.wrapped: called for the task's loss) and make the optimizer and
        EMA over self.opt_model (FSDP replaces parameters, so they are named after wrapping)."""
        self.model.to(self.dist.device)
        if weights is not None:
            self.model.load_state_dict(weights, strict=True)
        if self.run.compile:
            self.model.compile()
        self.wrapped = wrap(self.model, self.dist, fsdp=self.run.fsdp, loss=self.task.loss)
        self.opt_model = self.wrapped.model if self.run.fsdp else self.model
        self.optimizer = self.task.optimizer(self.opt_model)
        self.ema = EMA(self.opt_model, self.task.ema) if self.task.ema else None
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]

    def restore(self, resume: dict | None) -> int:
        """The step to start from, with the optimizer, EMA, RNG, task state and metric records of
        `resume` restored (or a fresh start's seeds)."""
        if resume is None:
            self.log.reset()
            self.task.seed(self.dist.rank, 0)
            return 0
        start = int(resume["state"]["step"])
        if not self.checkpoints.restore(resume, self.opt_model, self.optimizer, self.ema):
            self.task.seed(self.dist.rank, start)
        self.task.load_state(*resume["task"])
        self.log.resume(start)
        return start

    def seconds(self) -> float:
        """Training time of the run so far, over all its invocations."""
        return self.seconds_before + time.time() - self.t0

    # ------------------------------------------------------------ the loop

    def fit(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        """Train from self.start to the schedule's end (or run.stop_after, or the task's time limit);
        `on_step(done)` after each step."""
        run, total = self.run, self.total
        if self.start >= total:
            if self.dist.is_main:
                print(f"{self.out}: already trained ({self.start}/{total} steps); nothing to train")
            return TrainResult(self.out, self.start, total, True, self.start, self.log.records)
        stop = min(total, run.stop_after) if run.stop_after else total
        ckpt_every = auto_ckpt_every(total) if run.ckpt_every is None else run.ckpt_every
        bar = progress_bar(total=stop, initial=self.start, show=(run.progress and self.dist.is_main),
                           desc=f"train {self.task.name}", unit="step", dynamic_ncols=True)
        self.window.reset()
        self.t0 = time.time()
        done = self.start
        for step in range(self.start, stop):
            if self.task.time_limit_s and self.seconds() > self.task.time_limit_s:
                break
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
        if done < stop and done > self.checkpoints.last_saved:  # out of time: keep what was trained
            if self.window.steps:
                self.log_metrics(done)
            self.save(done)
        bar.close()
        self.log.close()
        return TrainResult(self.out, done, total, done >= total, self.start, self.log.records)

    def train_step(self, step: int) -> torch.Tensor:
        """Optimizer step `step` (from 0): this rank's share of the global batch in run.grad_accum
        micro-batches (the task's `batches`; gradients all-reduced once, on the last), clipping, the
        optimizer, EMA, then the task's `after_step`. Returns the step's loss; it and the metrics
        stay on the device, in self.window and self.step_stats.

        Each micro-batch's loss is a sum over what the task counts (positions), divided by the count
        of the whole global batch (all micro-batches of all ranks, gathered before the first forward):
        the step's loss is the mean over every counted position of the global batch, however it is
        split, also when a micro-batch counts fewer positions than another (stage 2's coarse noise)."""
        dev = self.dist.device
        self.lr = self.task.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.wrapped.train()
        batches = self.task.batches(step, self.dist, self.run.grad_accum)
        with torch.no_grad():
            count = self.task.count(self.model, batches)
        # DDP and FSDP average the ranks' gradients: dividing each rank's sum by count / world_size
        # makes that average the global sum over the global count
        per_rank = all_reduce_sum(count, self.dist).clamp(min=1) / self.dist.world_size
        step_loss = torch.zeros((), device=dev)
        for micro, batch in enumerate(batches):
            with no_sync(self.wrapped, micro < len(batches) - 1), self.autocast:
                loss_sum, metrics = self.wrapped(batch)
            share = loss_sum / per_rank.to(loss_sum.dtype)
            share.backward()
            step_loss += share.detach().float()
            self.window.add_micro_step(share, metrics, len(batches))
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.task.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.window.add_step(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.opt_model, step)
        extra = self.task.after_step(step)
        extra = torch.zeros((), device=dev) if extra is None else extra.detach().float()
        self.step_stats.append(torch.stack([step_loss, norm.detach().float(), extra]))
        return step_loss

    # ------------------------------------------------------------ records, checks, checkpoints

    def log_metrics(self, done: int) -> dict[str, Any]:
        """Check for divergence, write the record of the steps since the last one (means over steps and
        ranks, and the task's log_fields) and start a new window."""
        self.stop_if_diverged(done)
        task = self.task
        means, grad_norm, elapsed = self.window.means(self.dist)
        rec = {"step": done, "epoch": round(done / task.steps_per_epoch, 4), **means, "lr": self.lr,
               "grad_norm": grad_norm, "tokens_per_s": self.window.steps * task.tokens_per_step / elapsed,
               **task.log_fields()}
        if self.dist.device.type == "cuda":
            rec["max_mem_gb"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        else:
            rec["max_rss_gb"] = lifetime_peak_rss_bytes() / 2**30
        self.log.write(rec)
        if rec["loss"] > task.uniform_loss + 1.0 and not self.warnings and self.dist.is_main:
            self.warnings.append(f"step {done}: loss {rec['loss']:.4g} is above a uniform guess "
                                 f"(ln {round(math.exp(task.uniform_loss))} = {task.uniform_loss:.3f}): the run is "
                                 "probably diverging; a lower --lr may help")
            tqdm.write(f"warning: {self.warnings[-1]}", file=sys.stderr)
        self.window.reset()
        return rec

    def stop_if_diverged(self, done: int, *, weights: bool = False) -> None:
        """Raise TrainingDiverged (on every rank) when a step since the last check had a non-finite
        loss, gradient norm or extra check (the task's), or (weights=True) when a weight is no
        longer finite."""
        stats = torch.stack(self.step_stats) if self.step_stats else torch.zeros(0, 3, device=self.dist.device)
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
            loss, norm, extra = flags[n + 3 * hit[0]:n + 3 * hit[0] + 3].tolist()
            also = f", {self.task.extra_check} {extra:.4g}" if self.task.extra_check else ""
            what = f"at step {at}: loss {loss:.4g}, gradient norm {norm:.4g}{also} (not finite)"
        else:
            what = f"by step {done}: the weights hold NaN or infinite values"
        raise TrainingDiverged(f"{self.task.what} diverged {what}; stopped without saving. {self.kept_state()}")

    def kept_state(self) -> str:
        """What a diverged run leaves behind, and what to change (the task's advice)."""
        last = self.checkpoints.last_saved
        if not last:
            return f"No checkpoint was written to {self.out}; {self.task.advice}"
        return (f"{self.out} keeps the last good checkpoint (step {last}), which a rerun resumes from, but the "
                f"same settings diverge again: {self.task.advice}")

    def save(self, done: int) -> None:
        """Check the weights, then checkpoint step `done` (every rank takes part; rank 0 writes)."""
        self.stop_if_diverged(done, weights=True)
        task = self.task
        epoch, batch_in_epoch = divmod(done, task.steps_per_epoch)
        state = {"step": done, "total_steps": self.total, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "world_size": self.dist.world_size, "grad_accum": self.run.grad_accum, "seconds": self.seconds()}
        records = self.log.records
        info = {"step": done, "total_steps": self.total, "finished": done >= self.total,
                "epochs": done / task.steps_per_epoch, "tokens_seen": done * task.tokens_per_step,
                "ema": task.ema, "last": records[-1] if records else {},
                **({"warnings": list(self.warnings)} if self.warnings else {})}
        self.checkpoints.save(
            done, self.opt_model, self.optimizer, self.ema, ema_init=self.ema_init, state=state, info=info,
            task_state=task.state(),
            extra_files=lambda tmp: self.log.plot(tmp / "loss_curve.png", title=task.name, loss_label=task.loss_label),
            before_commit=self.log.close)
