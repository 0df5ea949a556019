"""Import LlamaGen's released VQ checkpoints (e.g. `vq_ds16_c2i.pt`) from a local file.

LlamaGen saves `{"model", "optimizer", "discriminator", ..., "args": argparse.Namespace, ["ema"]}`
with torch.save. It is read with `artifacts.load_foreign_checkpoint` (weights-only, argparse.Namespace allowed),
so the file cannot run arbitrary code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import file_sha256, load_foreign_checkpoint
from ..errors import ArtifactError
from .artifact import load_state_strict, save_tokenizer
from .model import VQConfig, VQModel, vq_preset

# Statistics only (a rolling window of recently used indices); not part of the model.
_DROP = ("quantize.codebook_used",)


def read_llamagen_checkpoint(path: str | Path) -> tuple[dict, str]:
    """The state_dict to use (`ema` if present, else `model`, else a bare state_dict) and its source."""
    ckpt = load_foreign_checkpoint(path, what="LlamaGen VQ checkpoint")
    if not isinstance(ckpt, dict):
        raise ArtifactError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key], key
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "state_dict"
    raise ArtifactError(f"{path}: no 'ema' or 'model' state_dict found (keys: {sorted(ckpt)[:8]})")


def import_llamagen_vq(path: str | Path, out_dir: str | Path, *, preset: str = "vq16", config: VQConfig | None = None,
                       overwrite: bool = False) -> VQModel:
    """Load a LlamaGen VQ checkpoint strictly into a `preset` (or `config`) model; save a tokenizer folder."""
    state, which = read_llamagen_checkpoint(path)
    state = {k: v for k, v in state.items() if k not in _DROP}
    model = VQModel(config or vq_preset(preset))
    load_state_strict(model, state, source=str(path))
    save_tokenizer(
        model, out_dir, overwrite=overwrite,
        made_from={"llamagen_checkpoint": Path(path).name, "sha256": file_sha256(path), "weights": which},
        info={"imported_from": "LlamaGen"},
    )
    return model.eval()
