"""The settings of `ctfgen bench lasting` and the units they plan.

A unit is one pipeline seed of one (codebook size V, token grid, model preset, steps, batch): its own
tokenizer and clustering (seeded by the pipeline seed, shared by the unit's presets and budgets), CTF's
stage 1 and stage 2, the baseline, and the parameter-free stage 2 on CTF's stage 1. Every axis of the
study is a comma-separated field, so one folder and one results directory hold every unit of the plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from ....config import check_fields, item_list, option, option_of
from ....errors import CtfgenError
from ....models.preset_table import PRESET_NAMES
from ...recipe import GIVEN_EPOCHS, GivenClassifier, Recipe
from ..sweep_settings import StudyAxes, SweepSettings

ARMS = ("learned", "uniform")  # CTF's stage 2: the trained one, and the uniform member prior
# tokenizer levels by downsampling factor: 4x is the fmnist preset's (1, 2, 4) (32 px -> 8x8 tokens);
# 2x has one level less, its 16 channels at full size and 64 at the grid (32 px -> 16x16 = 256 tokens)
LEVELS = {4: {}, 2: {"ch_mult": (1, 4)}}
CPU_BATCH, GPU_BATCH = 32, 256
# axes: a folder made with other values of these is extended, not refused (units are keyed by them)
AXES = {"vocabs", "pipeline_seeds", "grids", "presets", "arms", "steps", "batch_size", "inception", "dtype"}


@dataclass(frozen=True)
class Unit:
    V: int
    grid: int
    preset: str
    steps: int
    batch: int
    seed: int  # the pipeline seed

    @property
    def key(self) -> str:
        return f"V{self.V}-g{self.grid}-{self.preset}-n{self.steps}-b{self.batch}-p{self.seed}"

    @property
    def recipe(self) -> str:
        """The unit's key without its seed: the seeds of one recipe are compared and averaged."""
        return self.key.rsplit("-p", 1)[0]

    @property
    def pipeline_dir(self) -> str:
        """The folder (under the study's) of the tokenizer, codes and clustering of this seed."""
        return f"V{self.V}-g{self.grid}/seed{self.seed}"

    @property
    def models_dir(self) -> str:
        """The folder (under the study's) of the unit's models, their snapshots beside them."""
        return f"{self.pipeline_dir}/{self.preset}-n{self.steps}-b{self.batch}"


@dataclass
class LastingConfig(Recipe, GivenClassifier, SweepSettings, StudyAxes):
    """`ctfgen bench lasting`: every field is a flag (apps/cli/bench.py)."""

    vocabs: str = option("4096,16384", "codebook sizes V, comma-separated (a tokenizer per V, grid and seed)",
                         items=int, min=2, max=65536)
    k_ratio: int = option(32, "K = V / this many codes per coarse label", min=1)
    pipeline_seeds: int = option(2, "whole-pipeline seeds 0..N-1: each trains its own tokenizer, clustering and models",
                                 min=1)
    grids: str = option("8", "tokens per side, comma-separated: 8 (the fmnist tokenizer, 4x downsampling of 32 px) "
                             "or 16 (2x, one level less: 256 tokens)", items=int, min=1)
    presets: str = option("tiny", "model sizes of stage 1, stage 2 and the baseline, comma-separated (e.g. tiny,small)",
                          items=str, choices=PRESET_NAMES)
    arms: str = option("learned,uniform", "CTF's stage 2s: learned (trained) and uniform (the parameter-free member "
                                          "prior on the same stage 1)", items=str, choices=ARMS)
    steps: int = option_of(Recipe, "steps", 3000, help="optimizer steps of every model")
    batch_size: int = option_of(Recipe, "batch_size", 0, help=f"training batch (0: {CPU_BATCH} on a CPU, {GPU_BATCH} "
                                                              "on a GPU)", min=0)
    lr: float = option_of(Recipe, "lr", 8e-3, help="learning rate per 256 samples")
    warmup: int = option_of(Recipe, "warmup", 100, help="warm-up steps")
    wsd_decay: float = option(0.1, "the schedule: constant lr after warm-up, then a linear decay to 0 over this "
                                   "fraction of the run (warm-up, stable, decay)", min=0.0, max=1.0, note="0 = constant")
    eval_every: int = option(250, "held-out bits per token on the validation images every this many steps (and at "
                                  "the end); the best of them picks each method's checkpoint", min=1)
    val_images: int = option(2000, "validation images, held out from the end of the training split", min=1)
    code_images: int = option_of(Recipe, "code_images", 20000, help="training images encoded, from the start of the "
                                 "training split (0: all but the validation images)", note=None)
    test_images: int = option(0, "test images of the test-split NLL at each method's best checkpoint (0: all)", min=0)
    tokenizer_steps: int = option_of(Recipe, "tokenizer_steps", 500, help="training steps of each tokenizer")
    sweep_seeds: int = option_of(SweepSettings, "sweep_seeds", 1, help="pipeline seeds with a sweep of their own; "
                                                                       "later seeds reuse seed 0's picks")
    sampling: bool = option(True, "sample and score (classifier-FID); off: likelihood only")
    classifier_epochs: int = option_of(Recipe, "classifier_epochs", 3, help=GIVEN_EPOCHS)
    dtype: str = option("auto", "training precision: auto (bf16 autocast on a GPU, fp32 on a CPU), bf16 or fp32",
                        choices=("auto", "bf16", "fp32"))

    def check(self) -> "LastingConfig":
        from ....models.presets import canonical_preset

        for p in self.preset_list():
            canonical_preset(p)
        bad = [a for a in self.arm_list() if a not in ARMS]
        if bad or not self.arm_list():
            raise CtfgenError(f"arms: expected some of {', '.join(ARMS)}, got {self.arms!r}")
        check_fields(self, where="lasting config")
        for V in self.vocab_list():
            if V % self.k_ratio or V // self.k_ratio < 2 or V > 65536:
                raise CtfgenError(f"vocabs: V={V} must be a multiple of k_ratio={self.k_ratio} giving K >= 2, "
                                  "and at most 65536")
        r = self.data.resolution
        bad = [g for g in self.grid_list() if r % g or r // g not in LEVELS]
        if bad:
            raise CtfgenError(f"grids: {bad} not supported at {r} px; choose tokens per side "
                              f"{sorted(r // d for d in LEVELS)} (the tokenizer downsamples {sorted(LEVELS)}x)")
        if "uniform" in self.arm_list() and self.sampling and "learned" not in self.arm_list():
            raise CtfgenError("arms: the uniform stage 2 samples at the learned CTF's settings; add learned, or "
                              "turn sampling off")
        return self

    def grid_list(self) -> list[int]:
        return item_list(self, "grids")

    def preset_list(self) -> list[str]:
        return item_list(self, "presets") or [""]

    def tokenizer_levels(self, grid: int) -> dict:
        """VQConfig fields over the fmnist preset that give `grid` tokens per side."""
        return LEVELS[self.data.resolution // grid]

    def batch(self, on_gpu: bool) -> int:
        return self.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)

    def eval_steps(self) -> list[int]:
        return sorted({*range(self.eval_every, self.steps, self.eval_every), self.steps})

    def decay_start(self) -> int:
        """The first step of the final decay (the curve before it is the constant-rate one)."""
        return self.steps - max(1, round(self.steps * self.wsd_decay)) if self.wsd_decay else self.steps

    def units(self, on_gpu: bool) -> list[Unit]:
        """Every unit of the plan, seed first (a partial study holds every recipe for the first seeds)."""
        return [Unit(V, g, p, self.steps, self.batch(on_gpu), s) for s in range(self.pipeline_seeds)
                for V in self.vocab_list() for g in self.grid_list() for p in self.preset_list()]
