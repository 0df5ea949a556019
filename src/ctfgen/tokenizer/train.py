"""Tokenizer training: reconstruction + codebook + commitment losses, dead-code restarts,
and optionally an adversarial (PatchGAN, hinge) loss.

Dead codes are the usual failure of VQ with a large codebook: most codewords never win the
nearest-neighbour lookup and so never receive a gradient. Every `restart_every` steps, codewords
unused since the last check are moved onto encoder outputs of the current batch, which keeps the
whole codebook in play (the coarse-to-fine method needs a large, fully used codebook).
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..artifacts import recover_interrupted_write
from ..config import to_dict
from ..data import CLASSES_FILE, dataset_class_table, describe_classes, load_dataset
from ..data.classes import classes_json
from ..errors import CtfgenError, TrainingDiverged
from .. import run_state
from ..progress import progress_bar
from .artifact import save_tokenizer
from .lpips import LPIPS
from .losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from .config import TokenizerTrainConfig
from .model import VQModel
from .report import reconstruction_grid, reconstruction_report
from .resume import load_training_checkpoint, read_resumable, save_training_checkpoint


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def train_tokenizer(cfg: TokenizerTrainConfig, out_dir: str | Path, *, device: str | torch.device = "cpu",
                    overwrite: bool = False, progress: bool = True, ckpt_every: int | None = None,
                    on_step=None) -> dict:
    """Train, evaluate on the test split, and save the tokenizer folder; returns the report.

    Resumable: every `ckpt_every` steps (None: a tenth of the run, at most 1000; 0: never) the whole
    training state is saved in `out_dir` (tokenizer/resume.py), and running the same call again
    continues from there. A non-finite loss or gradient norm stops the run (TrainingDiverged) without
    saving; a final PSNR that is not a number is refused too. `on_step(done)` runs after each step (tests).
    """
    if cfg.vq.channels != cfg.data.channels or cfg.vq.resolution != cfg.data.resolution:
        raise CtfgenError(
            f"tokenizer config (channels {cfg.vq.channels}, resolution {cfg.vq.resolution}) does not match the data "
            f"(channels {cfg.data.channels}, resolution {cfg.data.resolution})")
    out = Path(out_dir)
    note = recover_interrupted_write(out)
    if note:
        print(f"note: {note}", file=sys.stderr)
    _seed_all(cfg.seed)
    train_ds, test_ds = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    config = to_dict(cfg)
    made_from = {"data": train_ds.fingerprint, "data_description": train_ds.describe()}
    resumable = None if overwrite else read_resumable(out, config, made_from)
    if out.exists() and not overwrite and resumable is None:
        raise CtfgenError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    classes = dataset_class_table(train_ds, test_ds)
    if progress:
        print(describe_classes(classes))
        for ds in (train_ds, test_ds):
            note = ds.transparency_note()[1]
            if note:
                print(note)
    if len(train_ds) < cfg.batch_size:
        raise CtfgenError(f"training split has {len(train_ds)} images, fewer than batch_size {cfg.batch_size}")
    model = VQModel(cfg.vq).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    lpips = None
    if cfg.lpips_weight > 0:
        if not cfg.lpips_vgg:
            raise CtfgenError("lpips_weight > 0 needs lpips_vgg (and usually lpips_lin): local weight files")
        lpips = LPIPS.from_files(cfg.lpips_vgg, cfg.lpips_lin).to(device)
    disc = d_opt = None
    if cfg.gan_weight > 0:
        disc = PatchDiscriminator(cfg.vq.channels).to(device).train()
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas)

    gen = torch.Generator().manual_seed(cfg.seed)
    usage_V = torch.zeros(cfg.vq.codebook_size, dtype=torch.long)
    history, restarted, start, seconds_before = [], 0, 0, 0.0
    batches = BatchStream(len(train_ds), cfg.batch_size, gen)
    if resumable is not None:
        saved = load_training_checkpoint(out, resumable, device=device)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if disc is not None:
            disc.load_state_dict(saved["disc"])
            d_opt.load_state_dict(saved["d_optimizer"])
        st, ts = saved["state"], saved["tensors"]
        start, history, restarted, seconds_before = st["step"], st["history"], st["restarted"], st["seconds"]
        usage_V = ts["usage"].clone()
        gen.set_state(ts["generator"])
        if "perm" in ts:
            batches.perm, batches.pos = ts["perm"].clone(), st["batch_pos"]
        run_state.restore_rng(*saved["rng"], device=torch.device(device))
        if progress:
            print(f"resuming {out} from step {start}/{cfg.steps}", file=sys.stderr)
    every = run_state.auto_ckpt_every(cfg.steps) if ckpt_every is None else ckpt_every
    last_saved = start

    def save(done: int) -> None:
        nonlocal last_saved
        weights = [t for t in model.state_dict().values() if t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in weights):
            raise TrainingDiverged(f"tokenizer training diverged by step {done}: the weights hold NaN or infinite "
                                   f"values; stopped without saving. {kept()}")
        tensors = {"usage": usage_V, "generator": gen.get_state()}
        if batches.perm is not None:
            tensors["perm"] = batches.perm
        save_training_checkpoint(out, config=config, made_from=made_from, step=done, steps=cfg.steps, model=model,
                                 opt=opt, disc=disc, d_opt=d_opt, tensors=tensors,
                                 state={"history": history, "restarted": restarted, "batch_pos": batches.pos,
                                        "seconds": seconds_before + time.time() - t0})
        last_saved = done

    def kept() -> str:
        return (f"{out} keeps the checkpoint of step {last_saved}, which a rerun resumes from, but the same settings "
                "diverge again: use a lower --lr" if last_saved else f"nothing was written to {out}; use a lower --lr")

    t0 = time.time()
    step = start - 1
    bar = progress_bar(range(start, cfg.steps), desc="train tokenizer", show=progress, initial=start, total=cfg.steps)
    for step in bar:
        if cfg.minutes and seconds_before + time.time() - t0 > 60 * cfg.minutes:
            step -= 1
            break
        for g in opt.param_groups:  # linear warm-up, cosine decay (as LambdaLR, but kept by the step count)
            g["lr"] = cfg.lr * _lr_factor(step, cfg)
        idx = batches.next()
        x = torch.stack([train_ds[int(i)][0] for i in idx]).to(device)
        if cfg.flip:
            flip_B = torch.rand(len(x), generator=gen) < 0.5
            x[flip_B.to(device)] = x[flip_B.to(device)].flip(-1)
        z = model.encode_latent(x)
        zq, codes, cb_loss, commit_loss = model.quantize(z)
        rec = model.decode_latent(zq)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + cb_loss + commit_loss
        if lpips is not None:
            loss = loss + cfg.lpips_weight * lpips(rec, x)
        use_gan = disc is not None and step >= cfg.gan_start
        if use_gan:
            loss = loss + cfg.gan_weight * hinge_g_loss(disc(rec))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not (math.isfinite(loss.item()) and math.isfinite(norm.item())):
            raise TrainingDiverged(f"tokenizer training diverged at step {step + 1}: loss {loss.item():.4g}, gradient "
                                   f"norm {norm.item():.4g} (not finite); stopped without saving. {kept()}")
        opt.step()
        if use_gan:
            d_loss = hinge_d_loss(disc(x), disc(rec.detach()))
            if not math.isfinite(d_loss.item()):
                raise TrainingDiverged(f"tokenizer training diverged at step {step + 1}: discriminator loss "
                                       f"{d_loss.item():.4g}; stopped without saving. {kept()}")
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        usage_V += torch.bincount(codes.flatten().cpu(), minlength=cfg.vq.codebook_size)
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
            restarted = restart_dead_codes(model, usage_V, z.detach(), gen)
            usage_V.zero_()
        psnr = 10 * torch.log10(4 / rec_loss.detach().clamp_min(1e-10)).item()
        if step % 10 == 0:
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", psnr=f"{psnr:.1f}", restarted=restarted)
            history.append({"step": step, "rec_loss": rec_loss.item(), "codebook_loss": cb_loss.item(),
                            "commit_loss": commit_loss.item(), "batch_psnr_db": psnr, "restarted": restarted,
                            "seconds": round(seconds_before + time.time() - t0, 1)})
        if every and (step + 1) % every == 0 and step + 1 < cfg.steps:
            save(step + 1)
        if on_step is not None:
            on_step(step + 1)
    bar.close()
    steps_done = step + 1
    if every and steps_done > last_saved:
        save(steps_done)  # the evaluation below can be long: a kill there loses no training
    train_seconds = seconds_before + time.time() - t0

    model.eval()
    report = reconstruction_report(model, test_ds, limit=cfg.eval_limit, device=device, progress=progress)
    if not math.isfinite(report.get("psnr_db", float("nan"))):
        raise TrainingDiverged(f"the trained tokenizer reconstructs the test split with PSNR {report.get('psnr_db')}: "
                               f"not saved as a tokenizer. {kept()}")
    report.update(split="test", train_steps=steps_done, train_seconds=round(train_seconds, 1),
                  train_images_seen=steps_done * cfg.batch_size)
    grid = reconstruction_grid(model, test_ds, device=device)
    log = "\n".join(json.dumps(h) for h in history) + "\n"
    save_tokenizer(
        model.cpu(), out_dir, overwrite=True,  # replaces this run's own checkpoint, or what --overwrite allowed
        made_from=made_from,
        info={"report": report, "train_config": config},
        extra_files={"reconstructions.png": grid, "train_log.jsonl": log.encode(), CLASSES_FILE: classes_json(classes)},
    )
    report["fingerprint"] = model.fingerprint
    return report
