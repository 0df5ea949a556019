"""LPIPS perceptual distance (Zhang et al. 2018, VGG variant) from weights on local disk.

Nothing is downloaded: the user points at two local files,
  - VGG16 ImageNet weights in torchvision's layout (`features.{i}.weight/bias`, e.g. vgg16-397923af.pth),
  - the LPIPS linear heads in the layout LlamaGen and taming ship as `vgg.pth`
    (`lin{0..4}.model.1.weight`, each (1, C, 1, 1)),
or one safetensors file holding both sets of keys. torchvision cannot be installed beside the pinned
CPU torch here, so the VGG16 trunk (13 convs, the standard layout) is written out below.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..artifacts import load_foreign_checkpoint
from ..errors import ArtifactError

# VGG16 "D" configuration; LPIPS taps the ReLU after conv1_2, 2_2, 3_3, 4_3 and 5_3.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of those ReLUs in torchvision's `features`
_CHANNELS = (64, 128, 256, 512, 512)
# ImageNet statistics in LPIPS's [-1, 1] input convention (its ScalingLayer).
_SHIFT = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
_SCALE = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in _CHANNELS)
        self.register_buffer("shift", _SHIFT.clone(), persistent=False)
        self.register_buffer("scale", _SCALE.clone(), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path | None = None) -> "LPIPS":
        state = _read(vgg_path)
        if lin_path is not None:
            state.update(_read(lin_path))
        model = cls()
        vgg = {k: v for k, v in state.items() if k.startswith("features.")}
        lin = {f"lins.{k[3]}.weight": v for k, v in state.items() if k.startswith("lin") and k.endswith(".model.1.weight")}
        want_vgg = {k for k in model.state_dict() if k.startswith("features.")}
        if set(vgg) != want_vgg or len(lin) != 5:
            raise ArtifactError(
                f"LPIPS weights incomplete: need VGG16 'features.*' ({len(want_vgg)} tensors, found {len(vgg)}) "
                f"and 'lin0..4.model.1.weight' (found {len(lin)}) in {vgg_path}" + (f" / {lin_path}" if lin_path else ""))
        try:
            model.load_state_dict({**vgg, **lin}, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"LPIPS weights do not fit VGG16: {e}") from None
        return model.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance between image batches in [-1, 1] (grey images use 3 equal channels)."""
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        h_x, h_y = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = 0.0
        tap = 0
        for i, layer in enumerate(self.features):
            h_x, h_y = layer(h_x), layer(h_y)
            if i == _TAPS[tap]:
                d = (_unit(h_x) - _unit(h_y)).pow(2)
                total = total + self.lins[tap](d).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(_TAPS):
                    break
        return total.mean()


def _unit(h: torch.Tensor) -> torch.Tensor:
    return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise ArtifactError(f"LPIPS weights not found: {path}")
        try:
            return dict(load_file(str(path)))
        except Exception as e:  # SafetensorError / OSError: a damaged or truncated file
            raise ArtifactError(f"cannot read LPIPS weights {path} ({str(e).splitlines()[0]}): the file is damaged "
                                "or not a safetensors file; copy it again") from None
    obj = load_foreign_checkpoint(path, what="LPIPS/VGG weights file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a state_dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
