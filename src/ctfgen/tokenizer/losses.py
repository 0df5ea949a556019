"""Optional losses for tokenizer training: a PatchGAN adversary (hinge loss).

The adversary needs no pretrained weights, so it is always available. (A perceptual LPIPS loss
needs VGG weights that cannot be downloaded here; see train.py for how a local file is used.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (as in pix2pix / taming): one real/fake logit per image patch."""

    def __init__(self, channels: int, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, n_layers):
            c_next = width * min(2 ** i, 8)
            layers += [nn.Conv2d(c, c_next, 4, 2, 1, bias=False), nn.BatchNorm2d(c_next), nn.LeakyReLU(0.2)]
            c = c_next
        layers += [nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()
