"""One trainer for the baseline, stage 1 (ar) and stage 2 (aux): `ctfgen train {ar,aux,baseline}`."""
from .config import RunOptions, TrainConfig, default_lr

# The trainer needs torch; loading it on first use lets the command line read the configs at once.
_LAZY = {"load_model": "checkpoint", "BatchOrder": "data", "TokenDataset": "data", "TrainResult": "trainer",
         "train": "trainer"}

__all__ = ["TrainConfig", "RunOptions", "TrainResult", "train", "load_model", "TokenDataset", "BatchOrder", "default_lr"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
