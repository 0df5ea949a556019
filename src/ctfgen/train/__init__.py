"""One trainer for the baseline, stage 1 (ar) and stage 2 (aux): `ctfgen train {ar,aux,baseline}`."""
from ..lazy import lazy_attributes
from .config import RunOptions, TrainConfig, default_lr

# The trainer needs torch; loading it on first use lets the command line read the configs at once.
_LAZY = {"load_model": "checkpoint", "BatchOrder": "data", "TokenDataset": "data", "TrainResult": "trainer",
         "Trainer": "trainer", "train": "trainer"}

__all__ = ["TrainConfig", "RunOptions", "TrainResult", "Trainer", "train", "load_model", "TokenDataset", "BatchOrder", "default_lr"]

__getattr__ = lazy_attributes(__name__, _LAZY)
