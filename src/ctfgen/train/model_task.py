"""The model task (train/task.py): a baseline, stage-1 (ar) or stage-2 (aux) model over a code
store, in the run folder of kind "model" (train/checkpoint.py); and `BenchTask`, the same step over
one fixed batch in memory, which the benchmarks time through `Trainer.for_bench`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import run_state
from ..config import from_dict, to_dict
from ..dist import DistInfo
from ..errors import ArtifactError, CtfgenError
from ..models.artifact import TrainedModel, model_config_dict, model_fingerprint
from ..models.config import KINDS
from . import checkpoint as ckpt
from .config import RunOptions, TrainConfig
from .data import BatchOrder, TokenDataset, check_inputs
from .parallel import param_groups
from .task import Task


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


def open_inputs(kind: str, codes_dir: Path, coarse_map_dir: str | Path | None) -> tuple[Any, Any]:
    """The code store and the coarse map (None for the baseline, which never looks at coarse
    labels), checked against each other and the model kind."""
    from ..cluster import CoarseMap
    from ..codes import CodeStore

    codes = CodeStore.open(codes_dir)
    coarse = CoarseMap.load(coarse_map_dir) if coarse_map_dir is not None else None
    check_inputs(kind, codes, coarse, codes_dir=str(codes_dir), coarse_dir=str(coarse_map_dir))
    return codes, (coarse if KINDS[kind].needs_coarse_map else None)


def configure(model: torch.nn.Module, run: RunOptions) -> None:
    """Run options the model reads while training: stage 2's loss formulation (--aux-loss)."""
    if KINDS[model.config.kind].member_head:
        model.loss_impl = run.aux_loss


class ModelTask(Task):
    """Train model `cfg.kind` on the code store `codes_dir` (and coarse map): TrainTask (train/task.py).

    Each step takes one global batch of the epoch's permutation (data.py BatchOrder), split into
    equal micro-batches over ranks and grad_accum; the loss is a sum over the positions the model
    counts, so the step's loss is the mean over the whole global batch however it is split."""

    what = "training"
    extra_check = ""
    loss_label = "training loss (cross-entropy)"

    def __init__(self, cfg: TrainConfig, run: RunOptions, dist: DistInfo, *, codes_dir: Path,
                 coarse_map_dir: str | Path | None = None, build_model: Callable[..., torch.nn.Module] | None = None):
        self.cfg, self.run, self.device = cfg, run, dist.device
        self.codes, self.coarse = open_inputs(cfg.kind, codes_dir, coarse_map_dir)
        self.build_model = build_model
        self.order = BatchOrder(len(self.codes.labels), cfg.batch_size, seed=cfg.seed)
        self.order.micro_batch(0, world_size=dist.world_size, grad_accum=run.grad_accum)  # check the split early
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total = cfg.total_steps(self.steps_per_epoch)
        self.dataset = TokenDataset(self.codes.codes, self.codes.labels, seed=cfg.seed,
                                    code_to_coarse=None if self.coarse is None else self.coarse.code_to_coarse)
        self.tokens_per_step = cfg.batch_size * self.dataset.seq_len
        self.name = f"{cfg.kind} {cfg.preset}"
        self.grad_clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        self.ema = cfg.ema
        self.advice = (f"train with a lower --lr (now {cfg.lr:g}), a warm-up (--warmup) or gradient clipping "
                       "(--grad-clip) into a new --out")
        self.time_limit_s = 0.0
        self.made_from = {"codes": self.codes.fingerprint, "tokenizer": self.codes.tokenizer_fingerprint}
        if self.coarse is not None:
            self.made_from["coarse_map"] = self.coarse.fingerprint

    def build(self) -> torch.nn.Module:
        run_state.seed_all(self.cfg.seed)  # identical initial weights on every rank
        model = build_for(self.cfg, self.codes, self.coarse, self.build_model)
        # stage 2's coarse noise (--aux-coarse-noise or --model-opt coarse_noise=P): draws per sample
        self.dataset.coarse_draws = getattr(model.config, "coarse_noise", 0.0) > 0
        configure(model, self.run)
        self.config = {"model": model_config_dict(model), "train": to_dict(self.cfg), "model_kind": self.cfg.kind}
        out_vocab = getattr(model.config, "out_vocab", 0)
        self.uniform_loss = math.log(out_vocab) if out_vocab else math.inf  # the zero-initialised head's loss
        self.format = ModelFormat(self.config, self.made_from)
        return model

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.peak_lr, betas=(cfg.beta1, cfg.beta2))

    def lr_at(self, step: int) -> float:
        return self.cfg.lr_at(step, self.total)

    def seed(self, rank: int, start: int) -> None:
        # different dropout on each rank; a resume on another number of ranks draws from new seeds
        run_state.seed_all(self.cfg.seed + (1000003 * start if start else 0) + rank)

    def batches(self, step: int, dist: DistInfo, grad_accum: int) -> list[dict[str, torch.Tensor]]:
        epoch, _ = self.order.position(step)
        self.dataset.set_epoch(epoch)
        out = []
        for micro in range(grad_accum):
            idx = self.order.micro_batch(step, rank=dist.rank, world_size=dist.world_size, micro=micro,
                                         grad_accum=grad_accum)
            out.append({k: v.to(self.device, non_blocking=True) for k, v in self.dataset.batch(idx, step).items()})
        return out

    def count(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return torch.stack([model.counted_positions(b).sum() for b in batches]).sum().double()

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return model.loss_sum(batch)

    def log_fields(self) -> dict[str, Any]:
        return {}  # a validation loss, measured at log time, would go here


class BenchTask(ModelTask):
    """ModelTask's step over `model` (built by the caller, on the device) and one fixed `batch` (on
    the device) at a constant learning rate: no code store, no run folder."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], run: RunOptions, *, lr: float,
                 weight_decay: float, grad_clip: float, betas: tuple[float, float] = (0.9, 0.95)):
        self.model, self.fixed, self.run = model, batch, run
        self.lr, self.weight_decay, self.betas = lr, weight_decay, betas
        self.grad_clip = grad_clip if grad_clip > 0 else math.inf
        self.ema, self.total, self.steps_per_epoch = 0.0, 0, 1
        self.tokens_per_step = batch["codes"].numel()
        self.name, self.uniform_loss, self.time_limit_s = model.config.kind, math.inf, 0.0
        self.config, self.made_from, self.format = {}, {}, None

    def build(self) -> torch.nn.Module:
        configure(self.model, self.run)
        return self.model

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(model, self.weight_decay), lr=self.lr, betas=self.betas)

    def lr_at(self, step: int) -> float:
        return self.lr

    def seed(self, rank: int, start: int) -> None:
        pass  # the caller seeded before building the model and the batch

    def batches(self, step: int, dist: DistInfo, grad_accum: int) -> list[dict[str, torch.Tensor]]:
        return [self.fixed]


class ModelFormat:
    """The run folder of a model: kind "model" (train/checkpoint.py), `config` {"model", "train",
    "model_kind"} and `made_from` recorded in each manifest and matched on resume."""

    def __init__(self, config: Mapping[str, Any], made_from: Mapping[str, str]):
        self.config, self.made_from = dict(config), dict(made_from)

    def open(self, out: Path) -> dict | None:
        manifest = ckpt.read_checkpoint_manifest(out)
        if manifest is not None:
            self.check_resume(out, manifest)
        return manifest

    def write_folder(self, tmp: Path, model_state: Mapping[str, torch.Tensor], *, info: Mapping[str, Any],
                     also: Callable[[Path], None]) -> None:
        fingerprint = model_fingerprint(model_state, self.config.get("model"))
        TrainedModel.write_folder(tmp, model_state, fingerprint=fingerprint, config=self.config,
                                  made_from=self.made_from, info=info, also=also)

    def load(self, out: Path, manifest: dict, param_names: list[str]) -> None:
        return None  # one format since 0.1.0

    def check_resume(self, out: Path, manifest: dict) -> None:
        saved = dict(manifest.get("config", {}))
        if isinstance(saved.get("train"), dict):  # a field added since counts as its default (the run's schedule)
            try:
                saved["train"] = to_dict(from_dict(TrainConfig, saved["train"]))
            except CtfgenError:
                pass  # a field that no longer exists: compared as it is, and reported
        for section in ("train", "model"):
            diff = run_state.first_difference(saved.get(section), self.config[section])
            if diff is not None:
                old, new = _lookup(saved.get(section), diff), _lookup(self.config[section], diff)
                raise ArtifactError(f"cannot resume {out}: {section} config field '{diff}' is {old!r} in the "
                                    f"checkpoint but {new!r} now; rerun with the original settings or use another --out")
        diff = run_state.first_difference(manifest.get("made_from", {}), self.made_from)
        if diff is not None:
            raise ArtifactError(f"cannot resume {out}: it was made from {diff} "
                                f"{manifest.get('made_from', {}).get(diff)!r}, this command gives "
                                f"{self.made_from.get(diff)!r}; use the same --codes/--coarse-map or another --out")


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d
