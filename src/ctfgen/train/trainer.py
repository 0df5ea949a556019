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
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..config import to_dict
from ..errors import ArtifactError, CtfgenError, TrainingDiverged
from . import checkpoint as ckpt
from .config import RunOptions, TrainConfig, auto_ckpt_every
from .data import BatchOrder, TokenDataset, check_inputs
from .dist import DistInfo, all_gather_objects, all_reduce_mean, barrier, broadcast_object, init_distributed, no_sync, shutdown
from .logs import MetricsLog, peak_rss_gb
from .parallel import EMA, full_model_state, full_optimizer_state, load_full_optimizer_state, param_groups, wrap


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    finished: bool
    resumed_from: int  # step the run started at (0: fresh)
    records: list[dict[str, Any]] = field(default_factory=list)


def model_config_dict(model: torch.nn.Module) -> dict:
    cfg = model.config
    return cfg.to_dict() if hasattr(cfg, "to_dict") else to_dict(cfg)


def build_for(cfg: TrainConfig, codes, coarse, build_model: Callable | None = None) -> torch.nn.Module:
    if build_model is None:
        from ..models import build_model
    kwargs: dict[str, Any] = dict(vocab_size=codes.vocab_size, num_classes=codes.num_classes, grid=codes.grid[0])
    if cfg.kind != "baseline":
        kwargs["coarse_vocab"] = coarse.k
    if cfg.kind == "aux":
        kwargs["code_to_coarse"] = coarse.code_to_coarse
    overrides = dict(cfg.model_overrides)
    if cfg.aux_coarse_noise:
        overrides["coarse_noise"] = cfg.aux_coarse_noise
    return build_model(cfg.kind, cfg.preset, **kwargs, **overrides)


def _check_resume(manifest: dict, config: dict, made_from: dict, out_dir: Path) -> None:
    saved = manifest.get("config", {})
    for section in ("train", "model"):
        diff = ckpt.first_difference(saved.get(section), config[section])
        if diff is not None:
            old, new = _lookup(saved.get(section), diff), _lookup(config[section], diff)
            raise ArtifactError(f"cannot resume {out_dir}: {section} config field '{diff}' is {old!r} in the "
                                f"checkpoint but {new!r} now; rerun with the original settings or use another --out")
    diff = ckpt.first_difference(manifest.get("made_from", {}), made_from)
    if diff is not None:
        raise ArtifactError(f"cannot resume {out_dir}: it was made from {diff} "
                            f"{manifest.get('made_from', {}).get(diff)!r}, this command gives {made_from.get(diff)!r}; "
                            "use the same --codes/--coarse-map or another --out")


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


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
    out = Path(out_dir)
    owns_group = not torch.distributed.is_initialized()
    info = init_distributed(run.device)
    try:
        return _train(cfg, run, info, out, Path(codes_dir), coarse_map_dir, build_model, on_step)
    finally:
        if owns_group:
            shutdown(info)


def _train(cfg, run, info: DistInfo, out: Path, codes_dir: Path, coarse_map_dir, build_model, on_step) -> TrainResult:
    if run.fsdp and info.world_size == 1 and not torch.distributed.is_initialized():
        raise CtfgenError("--fsdp needs a distributed launch (torchrun --nproc_per_node N ...)")
    from ..cluster import CoarseMap
    from ..codes import CodeStore

    codes = CodeStore.open(codes_dir)
    coarse = CoarseMap.load(coarse_map_dir) if coarse_map_dir is not None else None
    check_inputs(cfg.kind, codes, coarse, codes_dir=str(codes_dir), coarse_dir=str(coarse_map_dir))
    if cfg.kind == "baseline":
        coarse = None  # the baseline never looks at coarse labels

    order = BatchOrder(len(codes.labels), cfg.batch_size, seed=cfg.seed)
    order.micro_batch(0, world_size=info.world_size, grad_accum=run.grad_accum)  # check the split early
    total = cfg.total_steps(order.steps_per_epoch)
    dataset = TokenDataset(codes.codes, codes.labels, code_to_coarse=None if coarse is None else coarse.code_to_coarse,
                           seed=cfg.seed)

    _seed_all(cfg.seed)  # identical initial weights on every rank
    model = build_for(cfg, codes, coarse, build_model)
    if hasattr(model, "loss_impl"):  # stage 2: how the cluster-masked loss is computed
        model.loss_impl = run.aux_loss
    config = {"model": model_config_dict(model), "train": to_dict(cfg), "model_kind": cfg.kind}
    made_from = {"codes": codes.fingerprint, "tokenizer": codes.tokenizer_fingerprint}
    if coarse is not None:
        made_from["coarse_map"] = coarse.fingerprint

    # Rank 0 decides whether to resume; every rank then reads the checkpoint (shared filesystem).
    decision: Any = None
    if info.is_main:
        try:
            manifest = ckpt.read_checkpoint_manifest(out)
            if manifest is not None:
                _check_resume(manifest, config, made_from, out)
            decision = ("resume" if manifest is not None else "fresh", None)
        except CtfgenError as e:
            decision = ("error", str(e))
    decision = broadcast_object(decision, info)
    if decision[0] == "error":
        raise ArtifactError(decision[1])
    resume = ckpt.load_training_state(out) if decision[0] == "resume" else None

    model.to(info.device)
    if resume is not None:
        model.load_state_dict(resume["model"], strict=True)
    if run.compile:
        model.compile()
    wrapped = wrap(model, info, fsdp=run.fsdp)
    opt_model = wrapped.model if run.fsdp else model  # FSDP replaces parameters; name them after wrapping
    optimizer = torch.optim.AdamW(param_groups(opt_model, cfg.weight_decay), lr=cfg.peak_lr,
                                  betas=(cfg.beta1, cfg.beta2))
    ema = EMA(opt_model, cfg.ema) if cfg.ema else None

    log = MetricsLog(out, enabled=info.is_main, tensorboard=run.tensorboard, wandb=run.wandb,
                     run_config={**config, "made_from": made_from})
    start = 0
    if resume is not None:
        start = int(resume["state"]["step"])
        load_full_optimizer_state(opt_model, optimizer, resume["optimizer"], fsdp=run.fsdp)
        if ema is not None:
            if resume["ema"] is None:
                raise ArtifactError(f"cannot resume {out}: the run keeps an EMA but ema.safetensors is missing")
            ema.load(resume["ema"])
        saved_world = len(resume["rng"])
        if saved_world == info.world_size:
            ckpt.restore_rng(*resume["rng"][info.rank], device=info.device)
        else:
            if info.is_main:
                print(f"note: checkpoint written by {saved_world} rank(s), resuming on {info.world_size}: "
                      "the data order is kept, random draws (dropout) restart from new seeds")
            _seed_all(cfg.seed + 1000003 * start + info.rank)
        log.resume(start)
    else:
        log.reset()
        _seed_all(cfg.seed + info.rank)  # different dropout on each rank

    if start >= total:
        if info.is_main:
            print(f"{out}: already trained ({start}/{total} steps); nothing to do")
        return TrainResult(out, start, total, True, start, log.records)

    stop = min(total, run.stop_after) if run.stop_after else total
    ckpt_every = auto_ckpt_every(total) if run.ckpt_every is None else run.ckpt_every
    seq_tokens = cfg.batch_size * dataset.seq_len
    autocast = run.autocast(info.device)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    step_stats: list[torch.Tensor] = []  # (loss, grad norm) of each step since the last check
    last_saved = start
    out_vocab = getattr(model.config, "out_vocab", 0)
    uniform_loss = math.log(out_vocab) if out_vocab else math.inf  # the zero-initialised head's loss
    warned: list[str] = []

    def stop_if_diverged(done: int, *, weights: bool = False) -> None:
        """Raise TrainingDiverged (on every rank) when a step since the last check had a non-finite
        loss or gradient norm, or (weights=True) when a weight is no longer finite."""
        nonlocal step_stats
        stats = torch.stack(step_stats) if step_stats else torch.zeros(0, 2, device=info.device)
        bad = (~torch.isfinite(stats)).any(-1).double()
        if weights:
            local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in params]  # FSDP shards
            finite = torch.stack([torch.isfinite(t).all() for t in local]).all()
            bad = torch.cat([bad, (~finite).double().reshape(1)])
        first = len(step_stats)
        flags = all_reduce_mean(torch.cat([bad, stats.double().flatten()]), info).cpu()
        step_stats = []
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
        kept = (f"{out} keeps the last good checkpoint (step {last_saved}), which a rerun resumes from"
                if last_saved else f"no checkpoint was written to {out}")
        raise TrainingDiverged(
            f"training diverged {what}; stopped without saving. {kept}, but the same settings diverge again: "
            f"train with a lower --lr (now {cfg.lr:g}), a warm-up (--warmup) or gradient clipping (--grad-clip) "
            "into a new --out")

    def save(done: int) -> None:
        nonlocal last_saved
        stop_if_diverged(done, weights=True)
        full = full_model_state(opt_model, fsdp=run.fsdp)
        ema_full = ema.full_state(full) if ema is not None else None
        opt_state = full_optimizer_state(opt_model, optimizer, fsdp=run.fsdp)
        rng = all_gather_objects(ckpt.capture_rng(info.device), info)
        if info.is_main:
            epoch, batch_in_epoch = order.position(done)
            state = {"step": done, "total_steps": total, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                     "world_size": info.world_size, "grad_accum": run.grad_accum}
            ckpt.save_checkpoint(
                out, model_state=full, ema_state=ema_full, optimizer_state=opt_state, rng_per_rank=rng,
                state=state, config=config, made_from=made_from,
                info={"step": done, "total_steps": total, "finished": done >= total, "epochs": done / order.steps_per_epoch,
                      "tokens_seen": done * seq_tokens, "ema": cfg.ema, "last": log.records[-1] if log.records else {},
                      **({"warnings": list(warned)} if warned else {})},
                extra_files=lambda tmp: log.plot(tmp / "loss_curve.png", title=f"{cfg.kind} {cfg.preset}"),
                before_commit=log.close,
            )
        last_saved = done
        barrier(info)

    bar = tqdm(total=stop, initial=start, disable=not (run.progress and info.is_main), desc=f"train {cfg.kind}",
               unit="step", dynamic_ncols=True)
    window: dict[str, Any] = {}
    window_steps, grad_norm_sum, t0 = 0, torch.zeros((), device=info.device), time.perf_counter()
    done = start
    for step in range(start, stop):
        epoch, _ = order.position(step)
        dataset.set_epoch(epoch)
        lr = cfg.lr_at(step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        wrapped.train()
        step_loss = torch.zeros((), device=info.device)
        for micro in range(run.grad_accum):
            idx = order.micro_batch(step, rank=info.rank, world_size=info.world_size, micro=micro,
                                    grad_accum=run.grad_accum)
            batch = {k: v.to(info.device, non_blocking=True) for k, v in dataset.batch(idx).items()}
            with no_sync(wrapped, micro < run.grad_accum - 1), autocast:
                loss, metrics = wrapped(batch)
            (loss / run.grad_accum).backward()
            # kept as tensors until the log step, so the GPU is not synchronised every micro-step
            values = {k: v for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}
            values["loss"] = loss.detach()
            step_loss += loss.detach().float() / run.grad_accum
            for k, v in values.items():
                v = v.detach().float().reshape(()) if isinstance(v, torch.Tensor) else float(v)
                window[k] = window.get(k, 0.0) + v / run.grad_accum
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        grad_norm_sum += norm
        step_stats.append(torch.stack([step_loss, norm.detach().float()]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(opt_model)
        done = step + 1
        window_steps += 1
        bar.update(1)

        if done % run.log_every == 0 or done == stop:
            stop_if_diverged(done)
            keys = sorted(window)
            values = torch.stack([torch.as_tensor(window[k], device=info.device).double() for k in keys]
                                 + [grad_norm_sum.double()]) / window_steps
            values = all_reduce_mean(values, info).tolist()
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            elapsed = time.perf_counter() - t0
            rec = {"step": done, "epoch": round(done / order.steps_per_epoch, 4)}
            rec.update({k: v for k, v in zip(keys, values)})
            rec.update({"lr": lr, "grad_norm": values[-1], "tokens_per_s": window_steps * seq_tokens / elapsed})
            if info.device.type == "cuda":
                rec["max_mem_gb"] = torch.cuda.max_memory_allocated(info.device) / 2**30
            else:
                rec["max_rss_gb"] = peak_rss_gb()
            log.write(rec)
            if rec["loss"] > uniform_loss + 1.0 and not warned and info.is_main:
                warned.append(f"step {done}: loss {rec['loss']:.4g} is above a uniform guess "
                              f"(ln {out_vocab} = {uniform_loss:.3f}): the run is probably diverging; "
                              "a lower --lr may help")
                tqdm.write(f"warning: {warned[-1]}", file=sys.stderr)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.3g}")
            window, window_steps, grad_norm_sum = {}, 0, torch.zeros((), device=info.device)
            t0 = time.perf_counter()

        if done == stop or (ckpt_every and done % ckpt_every == 0):
            t_save = time.perf_counter()
            save(done)
            # keep checkpoint time out of tokens/s; the window's steps before the save still count
            t0 += time.perf_counter() - t_save
        if on_step is not None:
            on_step(done)
    bar.close()
    log.close()
    return TrainResult(out, done, total, done >= total, start, log.records)
