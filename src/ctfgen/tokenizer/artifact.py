"""Tokenizer artifact folder: manifest.json (kind "tokenizer", VQConfig) + model.safetensors.

The fingerprint hashes the weights, so codes, coarse maps and models made from this tokenizer can
record it and a later stage can refuse to mix artifacts of different tokenizers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from ..artifacts import artifact_dir, check_state_dict, fingerprint_tensors, read_manifest, write_manifest
from ..config import from_dict, to_dict
from ..errors import ArtifactError
from ..filecheck import check_finite, load_safetensors
from .model import VQConfig, VQModel

KIND = "tokenizer"
WEIGHTS = "model.safetensors"


def tokenizer_fingerprint(model: VQModel) -> str:
    return fingerprint_tensors(model.state_dict())


def save_tokenizer(
    model: VQModel,
    out_dir: str | Path,
    *,
    made_from: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> str:
    """Write the tokenizer folder atomically; returns its fingerprint."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fp = fingerprint_tensors(state)
    with artifact_dir(out_dir, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"fingerprint": fp})
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        write_manifest(tmp, kind=KIND, fingerprint=fp, config=to_dict(model.config), made_from=made_from, info=info)
    model.fingerprint = fp
    return fp


def load_tokenizer(folder: str | Path, device: str | torch.device = "cpu") -> VQModel:
    """Load a tokenizer folder (strictly); the model comes back in eval mode with `.fingerprint` set."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND)
    cfg = from_dict(VQConfig, manifest["config"], where=f"{folder / 'manifest.json'}: config")
    model = VQModel(cfg)
    state = load_safetensors(folder, manifest, WEIGHTS,
                             redo="train or import the tokenizer again (everything made from it records its fingerprint)")
    check_finite(state, where=str(folder / WEIGHTS))
    load_state_strict(model, state, source=str(folder / WEIGHTS))
    if fingerprint_tensors(state) != manifest["fingerprint"]:
        raise ArtifactError(f"{folder / WEIGHTS} does not match the fingerprint in its manifest (file changed or corrupt)")
    model.fingerprint = manifest["fingerprint"]
    model.manifest = manifest
    return model.to(device).eval()


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    check_state_dict(model, state, where=source)
    model.load_state_dict(state, strict=True)
