"""The settings of `ctfgen bench quality` (kept apart from the bench, so that the command line can
read them without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataConfig
from ..errors import CtfgenError

INCEPTION_WHEN = ("last", "all", "none")


@dataclass
class QualityConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: str = ""  # an existing tokenizer folder ("" trains one with the settings below)
    tokenizer_steps: int = 2400
    tokenizer_batch: int = 32
    views: str = "none"
    code_images: int = 0  # every training image is encoded
    k: int = 128
    cluster_method: str = "kmeans"
    preset: str = "tiny"  # stage 1, stage 2 and the baseline
    steps: int = 1000  # optimizer steps of each model's schedule
    checkpoints: int = 4  # evaluations, evenly spaced; the last one at `steps`
    batch_size: int = 64
    # per 256 samples. 8e-3: at 2e-3 the baseline lagged mostly for want of a higher rate, which made
    # CTF look better than it is (docs/RESULTS.md, "The same comparison at a tuned learning rate")
    lr: float = 8e-3
    warmup: int = 100
    samples_per_class: int = 500  # for each model at each checkpoint (5000 on Fashion-MNIST)
    classifier: str = ""  # an existing domain-classifier folder ("" trains one)
    classifier_epochs: int = 6
    inception: str = "last"  # FID with the Inception network at: the last checkpoint, all, or none
    reference_images: int = 5000  # test-split images the samples are compared with
    # ablations: shorter training and fewer samples, classifier metrics only (see ablations.py)
    ablation_steps: int = 300
    ablation_samples_per_class: int = 100
    seed: int = 0

    def check(self) -> "QualityConfig":
        if self.inception not in INCEPTION_WHEN:
            raise CtfgenError(f"inception must be one of {INCEPTION_WHEN}, got {self.inception!r}")
        for name in ("steps", "checkpoints", "samples_per_class", "ablation_steps", "ablation_samples_per_class"):
            if getattr(self, name) < 1:
                raise CtfgenError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoints > self.steps:
            raise CtfgenError(f"checkpoints ({self.checkpoints}) cannot exceed steps ({self.steps})")
        return self

    def checkpoint_steps(self) -> list[int]:
        return sorted({round(self.steps * (i + 1) / self.checkpoints) for i in range(self.checkpoints)})
