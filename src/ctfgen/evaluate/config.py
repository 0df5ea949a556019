"""The domain classifier's settings and the accuracy below which its metrics mean little: torch-free,
so that the command line makes its flags from them without loading the classifier."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option

# A domain classifier below this test accuracy hardly tells the classes (or good images from bad)
# apart, so the metrics on its features mean little (issue 15: one at 13% on ten classes gave
# classifier-FID 0.07 and precision 0.92 without a word). Results record a warning instead.
MIN_CLASSIFIER_ACCURACY = 0.5


@dataclass
class ClassifierConfig:
    """The classifier network (evaluate/classifier.py: DomainClassifier); saved as its manifest's "model"."""

    resolution: int = option(32, "side of the (square) input images, pixels", min=1)
    channels: int = option(1, "channels of the input images", choices=(1, 3))
    num_classes: int = option(10, "classes the head predicts", min=1)
    width: int = option(16, "channels of the first conv block", min=1)  # doubled at each of the three blocks
    dropout: float = option(0.2, "dropout before the head", min=0.0, max=1.0, max_open=True)


@dataclass
class ClassifierTrainConfig:
    """How `train_classifier` trains it (one-cycle AdamW)."""

    epochs: int = option(6, "passes over the training split", min=1)
    batch_size: int = option(128, "images per step", min=1)
    lr: float = option(3e-3, "peak learning rate", min=0.0, min_open=True)
    weight_decay: float = option(5e-4, "AdamW weight decay", min=0.0)
    # clothes are left/right symmetric enough; flipping halves overfitting
    hflip: bool = option(True, "random horizontal flips")
    seed: int = option(0, "seed of the weights and batches", min=0, max=2**63 - 1)
