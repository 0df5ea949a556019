"""One trainer for the baseline, stage 1 (ar) and stage 2 (aux): `ctfgen train {ar,aux,baseline}`."""
from .checkpoint import load_model
from .config import RunOptions, TrainConfig, default_lr
from .data import BatchOrder, TokenDataset
from .trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "RunOptions", "TrainResult", "Trainer", "train", "load_model", "TokenDataset", "BatchOrder", "default_lr"]
