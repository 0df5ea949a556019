"""The domain classifier: a small CNN trained by the project on the dataset it will judge.

Inception features describe ImageNet photographs; for 32x32 grey clothes a classifier trained on
the domain itself gives sharper numbers (classifier-FID, classifier-IS, precision/recall). Its
penultimate layer (after global pooling) gives the features, its softmax the class probabilities.
Saved as an artifact folder: `model.safetensors` + manifest (config, data fingerprint, accuracy).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..artifacts import WEIGHTS, ModuleArtifact, fingerprint_tensors
from ..config import to_dict
from ..errors import CtfgenError
from ..progress import progress_bar
from .config import ClassifierConfig, ClassifierTrainConfig

KIND = "classifier"


class DomainClassifier(nn.Module):
    """Three conv blocks (conv-BN-ReLU x2, then 2x2 pooling except the last), global average
    pooling to a `4*width` feature vector, and a linear head."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        layers: list[nn.Module] = []
        c_in = cfg.channels
        for i, c in enumerate((w, 2 * w, 4 * w)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(4 * w, cfg.num_classes)

    @property
    def feature_dim(self) -> int:
        return 4 * self.cfg.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def to_input(images_uint8: np.ndarray | torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, channels, resolution, resolution) in [-1, 1].

    Grey<->RGB by replication/averaging and bilinear resizing when the size differs, so samples
    of another format still reach the network (the result records when that happened).
    """
    x = torch.as_tensor(images_uint8)
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


@torch.inference_mode()
def accuracy(model: DomainClassifier, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size], model.cfg.resolution, model.cfg.channels)
        correct += (model(x).argmax(1).numpy() == labels[i : i + batch_size]).sum()
    return float(correct / max(len(images), 1))


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    cfg: ClassifierConfig | None = None,
    train_cfg: ClassifierTrainConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[int, DomainClassifier], None] | None = None,
) -> DomainClassifier:
    """Train on uint8 (N, H, W, C) images with one-cycle AdamW; returns the model in eval mode.

    `on_epoch(epoch, model)` runs after each epoch (e.g. to report test accuracy)."""
    cfg = cfg or ClassifierConfig()
    tc = train_cfg or ClassifierTrainConfig()
    device = torch.device(device)
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    x_all = to_input(train_images, cfg.resolution, cfg.channels)
    y_all = torch.as_tensor(np.asarray(train_labels, np.int64))
    model = DomainClassifier(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = (len(x_all) + tc.batch_size - 1) // tc.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.epochs * steps_per_epoch)
    bar = progress_bar(total=tc.epochs * steps_per_epoch, desc="classifier", show=progress, unit="step")
    for epoch in range(tc.epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(order), tc.batch_size):
            idx = order[i : i + tc.batch_size]
            x, y = x_all[idx], y_all[idx]
            if tc.hflip:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if on_epoch is not None:
            on_epoch(epoch, model)
    bar.close()
    return model.eval()


class ClassifierArtifact(ModuleArtifact):
    """A DomainClassifier and its folder; config.model is the ClassifierConfig."""

    KIND = KIND
    REDO = "train the classifier again"

    @classmethod
    def config_of(cls, module: DomainClassifier) -> dict:
        return {"model": to_dict(module.cfg)}

    @classmethod
    def fingerprint_of(cls, state, module: DomainClassifier) -> str:
        return fingerprint_tensors(state, extra=to_dict(module.cfg))

    @classmethod
    def build(cls, folder: Path, manifest: dict) -> DomainClassifier:
        return DomainClassifier(cls.typed_config(folder, manifest, ClassifierConfig, key="model"))


def save_classifier(
    model: DomainClassifier,
    out_dir: str | Path,
    *,
    train_cfg: ClassifierTrainConfig,
    data: dict,
    info: dict,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> dict:
    """Write the artifact; `data` describes the training/test splits (with fingerprints);
    `extra_files` (name -> bytes) are written beside the weights (e.g. classes.json)."""
    art = ClassifierArtifact(model, made_from={"data": data.get("train", {}).get("fingerprint", "")})
    return art.save(out_dir, overwrite=overwrite, info={**info, "data": data}, extra_files=extra_files,
                    config={**art.config_of(model), "train": to_dict(train_cfg)})


@torch.inference_mode()
def classifier_outputs(
    model: DomainClassifier,
    images_uint8: np.ndarray,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, 4*width) float32 and softmax probabilities (N, classes)."""
    if len(images_uint8) == 0:
        raise CtfgenError("no images to classify")
    model.eval()
    feats, probs = [], []
    for i in progress_bar(range(0, len(images_uint8), batch_size), desc="classifier features", show=progress):
        x = to_input(images_uint8[i : i + batch_size], model.cfg.resolution, model.cfg.channels).to(device)
        f = model.features(x)
        feats.append(f.float().cpu())
        probs.append(model.head(f).softmax(dim=1).float().cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()

