"""The settings of `ctfgen bench quality` (kept apart from the bench, so that the command line can
read them without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import check_fields, option, option_of
from ...errors import CtfgenError
from ..recipe import GIVEN_EPOCHS, GivenClassifier, Recipe, SingleRecipe

INCEPTION_WHEN = ("last", "all", "none")


@dataclass
class QualityConfig(SingleRecipe, GivenClassifier):
    tokenizer: str = option("", "existing tokenizer folder to use instead of training one ('' trains one with the "
                                "settings below)")
    tokenizer_steps: int = option_of(Recipe, "tokenizer_steps", 2400,
                                     help="tokenizer training steps (when no --tokenizer)")
    code_images: int = option_of(Recipe, "code_images", 0)  # every training image is encoded
    steps: int = option_of(Recipe, "steps", 1000, help="optimizer steps of each model's schedule")
    checkpoints: int = option(4, "evaluations along the schedule, evenly spaced; the last one at --steps", min=1)
    # per 256 samples. 8e-3: at 2e-3 the baseline lagged mostly for want of a higher rate, which made
    # CTF look better than it is (docs/RESULTS.md, "The same comparison at a tuned learning rate")
    lr: float = option_of(Recipe, "lr", 8e-3)
    warmup: int = option_of(Recipe, "warmup", 100)
    # 5000 on Fashion-MNIST
    samples_per_class: int = option(500, "samples per class for each model at each checkpoint", min=1)
    classifier_epochs: int = option_of(Recipe, "classifier_epochs", 6, help=GIVEN_EPOCHS)
    inception: str = option("last", "Inception FID at the last checkpoint, all, or none", choices=INCEPTION_WHEN)
    # ablations: shorter training and fewer samples, classifier metrics only (see ablations.py)
    ablation_steps: int = option(300, "training steps of each ablation model", min=1)
    ablation_samples_per_class: int = option(100, "samples per class of each ablation row", min=1)

    def check(self) -> "QualityConfig":
        check_fields(self)
        if self.checkpoints > self.steps:
            raise CtfgenError(f"checkpoints ({self.checkpoints}) cannot exceed steps ({self.steps})")
        return self

    def checkpoint_steps(self) -> list[int]:
        return sorted({round(self.steps * (i + 1) / self.checkpoints) for i in range(self.checkpoints)})
