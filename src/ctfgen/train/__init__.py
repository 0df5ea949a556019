"""One trainer for the baseline, stage 1 (ar) and stage 2 (aux) (`ctfgen train {ar,aux,baseline}`) and
the tokenizer (`ctfgen tokenizer train`), each a task (task.py)."""
from ..lazy import lazy_attributes
from .config import RunOptions, TrainConfig, default_lr

# The trainer needs torch; loading it on first use lets the command line read the configs at once.
_LAZY = {"BatchOrder": "data", "TokenDataset": "data", "TrainResult": "trainer", "Trainer": "trainer",
         "train": "trainer", "train_tokenizer": "tokenizer_task", "ModelTask": "model_task",
         "TokenizerTask": "tokenizer_task"}  # model folders load with models/artifact.py: TrainedModel.load

__all__ = ["TrainConfig", "RunOptions", "TrainResult", "Trainer", "train", "train_tokenizer", "ModelTask", "TokenizerTask",
           "TokenDataset", "BatchOrder", "default_lr"]

__getattr__ = lazy_attributes(__name__, _LAZY)
