"""The recipe an experiment runs the pipeline with: the settings a `Workspace` (experiments/workspace.py) reads
to make its tokenizer, codes, coarse labels, models and domain classifier. The demo, the quality
bench and the scaling study derive their settings from it (each with its own defaults, `option_of`),
so a shared setting is declared, documented, bounded and made a flag once. Torch-free: the command
line builds its flags from it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..cluster import METHODS
from ..config import option
from ..data import VIEW_MODES, DataConfig
from ..models.preset_table import PRESET_NAMES

SEED_MAX = 2**63 - 1


@dataclass
class Recipe:
    """What every experiment trains (the demo, the quality bench, the scaling and the lasting study).
    `data` is the dataset (the commands set its path, not a flag). The defaults are the demo's, sized
    for a 2-core CPU; the other experiments give their own. The model size is the workspace's
    (`OnePreset`) or each unit's."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer_steps: int = option(400, "tokenizer training steps", min=1)
    tokenizer_batch: int = option(32, "tokenizer batch size", min=1)
    # 200 steps of 64 draw 12,800 sequences per model, so 20,000 codes are more than each model sees,
    # at a third of the encoding time of all 60,000
    code_images: int = option(20000, "training images encoded into codes, the first N of the split", min=0,
                              note="0 = all")
    steps: int = option(200, "optimizer steps of each of stage 1, stage 2 and the baseline", min=1)
    batch_size: int = option(64, "training batch size", min=1)
    # 200 steps want a high rate: in a sweep on one set of codes (docs/RESULTS.md, "The demo")
    # classifier-FID fell for CTF and the baseline alike from 2e-3 up to 1.6e-2 (4e-3 at batch 64)
    lr: float = option(1.6e-2, "learning rate per 256 samples (scaled with the batch size)", min=0.0, min_open=True)
    warmup: int = option(30, "learning-rate warm-up steps (then cosine)", min=0)
    classifier_epochs: int = option(1, "epochs of the domain classifier used for classifier-FID/IS and "
                                       "precision/recall", min=1)
    reference_images: int = option(5000, "test-split images the samples are compared with", min=0, note="0 = all")


@dataclass
class OnePreset:
    """An experiment whose models all have one size (not the lasting study, which has several)."""

    preset: str = option("tiny", "size of stage 1, stage 2 and the baseline", choices=PRESET_NAMES)


@dataclass
class SingleRecipe(Recipe, OnePreset):
    """A recipe with one view of the images, one clustering and one seed (the demo, the quality bench;
    the scaling study sets these per unit)."""

    # one view per image keeps encoding quick; "flip" doubles the codes
    views: str = option("none", "views encoded per training image", choices=VIEW_MODES)
    # the paper's 32 codes per coarse label for a 4096-entry codebook
    k: int = option(128, "number of coarse labels (clusters of the codebook)", min=2)
    cluster_method: str = option("kmeans", f"clustering of the codebook: {', '.join(METHODS)}", choices=METHODS)
    seed: int = option(0, "seed of every step", min=0, max=SEED_MAX)



@dataclass
class GivenClassifier:
    """An experiment that can reuse a domain classifier instead of training one (the quality bench,
    the scaling study); its `classifier_epochs` help says so (`GIVEN_EPOCHS`)."""

    classifier: str = option("", "existing domain-classifier folder to use instead of training one ('' trains one)")


GIVEN_EPOCHS = "domain-classifier epochs (when no --classifier)"
