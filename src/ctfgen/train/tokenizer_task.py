"""Tokenizer training on the one Trainer: the tokenizer task (train/task.py) and `train_tokenizer`.

The loss is reconstruction + codebook + commitment, and optionally a perceptual (LPIPS) and an
adversarial (PatchGAN, hinge) term; after each optimizer step the discriminator takes its own step
and, every `restart_every` steps, codewords unused since the last restart move onto encoder outputs
(tokenizer/train.py restart_dead_codes). Batches come from one generator (tokenizer/train.py
BatchStream, which also draws the flips and the restarts), saved with every checkpoint, so a resumed
run ends with the weights of an uninterrupted one. The checkpoint folder is tokenizer/resume.py's.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..config import to_dict
from ..data import CLASSES_FILE, dataset_class_table, describe_classes, load_dataset
from ..data.classes import classes_json
from ..dist import DistInfo
from ..errors import CtfgenError, TrainingDiverged
from ..run_state import optimizer_from_tensors, optimizer_to_tensors
from ..tokenizer.artifact import save_tokenizer
from ..tokenizer.config import TokenizerTrainConfig
from ..tokenizer.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from ..tokenizer.lpips import LPIPS
from ..tokenizer.model import VQModel
from ..tokenizer.report import reconstruction_grid, reconstruction_report
from ..tokenizer.resume import TokenizerFormat
from ..run_state import seed_all
from ..tokenizer.train import BatchStream, _lr_factor, restart_dead_codes
from .config import RunOptions
from .task import Task
from .trainer import Trainer

LOG_EVERY = 10  # steps per metrics record


class TokenizerTask(Task):
    """Train a VQ tokenizer on the images of `train_ds` (TrainTask, train/task.py): Adam, linear
    warm-up then cosine decay (tokenizer/train.py _lr_factor), gradients clipped at norm 1, one
    process, no gradient accumulation."""

    what = "tokenizer training"
    name = "tokenizer"
    grad_clip = 1.0
    loss_label = "training loss (reconstruction + VQ, + LPIPS / adversary when on)"
    advice = "use a lower --lr"

    def __init__(self, cfg: TokenizerTrainConfig, train_ds, device: torch.device, *, made_from: Mapping[str, Any],
                 overwrite: bool = False):
        self.cfg, self.train_ds, self.device = cfg, train_ds, device
        self.config, self.made_from = to_dict(cfg), dict(made_from)
        self.format = TokenizerFormat(self.config, self.made_from, overwrite=overwrite)
        self.total = cfg.steps
        self.steps_per_epoch = len(train_ds) // cfg.batch_size
        self.tokens_per_step = cfg.batch_size * cfg.vq.grid ** 2
        self.time_limit_s = 60.0 * cfg.minutes
        self.gen = torch.Generator().manual_seed(cfg.seed)  # batch order, flips, restarts
        self.stream = BatchStream(len(train_ds), cfg.batch_size, self.gen)
        self.usage_V = torch.zeros(cfg.vq.codebook_size, dtype=torch.long, device=device)
        self.restarted = 0
        self.use_gan = False
        self.last: tuple[torch.Tensor, ...] = ()

    def build(self) -> VQModel:
        cfg, device = self.cfg, self.device
        seed_all(cfg.seed)
        self.model = VQModel(cfg.vq).to(device).train()
        self.lpips = self.disc = self.d_opt = None
        if cfg.lpips_weight > 0:  # built before the discriminator: both draw initial weights from torch's RNG
            if not cfg.lpips_vgg:
                raise CtfgenError("lpips_weight > 0 needs lpips_vgg (and usually lpips_lin): local weight files")
            self.lpips = LPIPS.from_files(cfg.lpips_vgg, cfg.lpips_lin).to(device)
        self.extra_check = "discriminator loss" if cfg.gan_weight > 0 else ""
        if cfg.gan_weight > 0:
            self.disc = PatchDiscriminator(cfg.vq.channels).to(device).train()
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=cfg.betas)
        return self.model

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * _lr_factor(step, self.cfg)

    # seed(): none of its own; torch's RNG goes on from the initial weights' draws, as it always has

    def batches(self, step: int, dist: DistInfo, grad_accum: int) -> list[dict[str, torch.Tensor]]:
        if dist.world_size != 1 or grad_accum != 1:
            raise CtfgenError("tokenizer training runs as one process, without gradient accumulation")
        cfg = self.cfg
        self.use_gan = self.disc is not None and step >= cfg.gan_start
        idx = self.stream.next()
        x = torch.stack([self.train_ds[int(i)][0] for i in idx]).to(self.device)
        if cfg.flip:
            flip_B = torch.rand(len(x), generator=self.gen) < 0.5
            x[flip_B.to(self.device)] = x[flip_B.to(self.device)].flip(-1)
        return [{"image": x}]

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        cfg, x = self.cfg, batch["image"]
        z = model.encode_latent(x)
        zq, codes, cb_loss, commit_loss = model.quantize(z)
        rec = model.decode_latent(zq)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + cb_loss + commit_loss
        if self.lpips is not None:
            loss = loss + cfg.lpips_weight * self.lpips(rec, x)
        if self.use_gan:
            loss = loss + cfg.gan_weight * hinge_g_loss(self.disc(rec))
        self.last = (x, rec, z, codes)
        metrics = {"rec_loss": rec_loss.detach(), "codebook_loss": cb_loss.detach(),
                   "commit_loss": commit_loss.detach(),
                   "batch_psnr_db": 10 * torch.log10(4 / rec_loss.detach().clamp_min(1e-10))}
        return loss, metrics

    def after_step(self, step: int) -> torch.Tensor | None:
        """The discriminator's step (once the adversary has started) and the dead-code restarts."""
        x, rec, z, codes = self.last
        self.last = ()
        d_loss = None
        if self.use_gan:
            d_loss = hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
        self.usage_V += torch.bincount(codes.flatten(), minlength=self.cfg.vq.codebook_size)
        if self.cfg.restart_every and (step + 1) % self.cfg.restart_every == 0:
            self.restarted = restart_dead_codes(self.model, self.usage_V, z.detach(), self.gen)
            self.usage_V.zero_()
        return d_loss

    def log_fields(self) -> dict[str, Any]:
        return {"restarted": self.restarted}  # codes moved by the last restart

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"usage": self.usage_V, "generator": self.gen.get_state()}
        if self.stream.perm is not None:
            tensors["perm"] = self.stream.perm
        meta: dict[str, Any] = {"restarted": self.restarted, "batch_pos": self.stream.pos}
        if self.disc is not None:
            tensors.update({f"disc.{k}": v for k, v in self.disc.state_dict().items()})
            d_tensors, meta["d_optimizer"] = optimizer_to_tensors(self.d_opt.state_dict())
            tensors.update({f"d_opt.{k}": v for k, v in d_tensors.items()})
        return tensors, meta

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.usage_V = tensors["usage"].to(self.device, copy=True)
        self.gen.set_state(tensors["generator"])
        if "perm" in tensors:
            self.stream.perm, self.stream.pos = tensors["perm"].clone(), meta["batch_pos"]
        self.restarted = meta["restarted"]
        if self.disc is not None:
            self.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
            d_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("d_opt.")}
            self.d_opt.load_state_dict(optimizer_from_tensors(d_tensors, meta["d_optimizer"]))


def train_tokenizer(cfg: TokenizerTrainConfig, out_dir: str | Path, *, device: str | torch.device = "cpu",
                    overwrite: bool = False, progress: bool = True, ckpt_every: int | None = None,
                    log_every: int = LOG_EVERY, on_step=None) -> dict:
    """Train, evaluate on the test split, and save the tokenizer folder; returns the report.

    Resumable: every `ckpt_every` steps (None: a tenth of the run, at most 1000; 0: only the last)
    the whole training state is saved in `out_dir` (tokenizer/resume.py), and running the same call
    again continues from there. A metrics record every `log_every` steps (out/metrics.jsonl while
    training, train_log.jsonl in the tokenizer folder). A non-finite loss or gradient norm stops
    the run (TrainingDiverged) without saving; a final PSNR that is not a number is refused too.
    `on_step(done)` runs after each step (tests).
    """
    if cfg.vq.channels != cfg.data.channels or cfg.vq.resolution != cfg.data.resolution:
        raise CtfgenError(
            f"tokenizer config (channels {cfg.vq.channels}, resolution {cfg.vq.resolution}) does not match the data "
            f"(channels {cfg.data.channels}, resolution {cfg.data.resolution})")
    out = Path(out_dir)
    train_ds, test_ds = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    classes = dataset_class_table(train_ds, test_ds)
    if progress:
        print(describe_classes(classes))
        for ds in (train_ds, test_ds):
            note = ds.transparency_note()[1]
            if note:
                print(note)
    if len(train_ds) < cfg.batch_size:
        raise CtfgenError(f"training split has {len(train_ds)} images, fewer than batch_size {cfg.batch_size}")
    dist = DistInfo(device=torch.device(device))
    run = RunOptions(device=str(dist.device), precision="fp32", progress=progress, ckpt_every=ckpt_every,
                     log_every=log_every)
    made_from = {"data": train_ds.fingerprint, "data_description": train_ds.describe()}
    task = TokenizerTask(cfg, train_ds, dist.device, made_from=made_from, overwrite=overwrite)
    trainer = Trainer(task, run, dist, out)
    if trainer.start and progress:
        print(f"resuming {out} from step {trainer.start}/{cfg.steps}", file=sys.stderr)
    result = trainer.fit(on_step)
    return _evaluate_and_save(trainer, task, test_ds, classes, steps_done=result.step, progress=progress)


def _evaluate_and_save(trainer: Trainer, task: TokenizerTask, test_ds, classes, *, steps_done: int,
                       progress: bool) -> dict:
    """Report on the test split and replace the run's checkpoint with the tokenizer folder."""
    cfg, out, model = task.cfg, trainer.out, trainer.model
    train_seconds = trainer.seconds()
    model.eval()
    report = reconstruction_report(model, test_ds, limit=cfg.eval_limit, device=task.device, progress=progress)
    if not math.isfinite(report.get("psnr_db", float("nan"))):
        raise TrainingDiverged(f"the trained tokenizer reconstructs the test split with PSNR {report.get('psnr_db')}: "
                               f"not saved as a tokenizer. {trainer.kept_state()}")
    report.update(split="test", train_steps=steps_done, train_seconds=round(train_seconds, 1),
                  train_images_seen=steps_done * cfg.batch_size)
    grid = reconstruction_grid(model, test_ds, device=task.device)
    log = "".join(json.dumps(r) + "\n" for r in trainer.log.records)
    fingerprint = save_tokenizer(
        model.cpu(), out, overwrite=True,  # replaces this run's own checkpoint, or what --overwrite allowed
        made_from=task.made_from,
        info={"report": report, "train_config": task.config},
        extra_files={"reconstructions.png": grid, "train_log.jsonl": log.encode(), CLASSES_FILE: classes_json(classes)},
    )
    report["fingerprint"] = fingerprint
    return report
