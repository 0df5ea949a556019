"""Tokenizer artifact folder: manifest.json (kind "tokenizer", VQConfig) + model.safetensors.

The fingerprint hashes the weights, so codes, coarse maps and models made from this tokenizer can
record it and a later stage can refuse to mix artifacts of different tokenizers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from ..artifacts import WEIGHTS, ModuleArtifact, check_state_dict, fingerprint_tensors
from ..config import to_dict
from ..errors import ArtifactError
from .model import VQConfig, VQModel

KIND = "tokenizer"
CODEBOOK_KEY = "quantize.embedding.weight"  # the (V, D) codebook inside WEIGHTS


class TokenizerArtifact(ModuleArtifact):
    """A VQModel and its folder; `manifest["config"]` is the VQConfig."""

    KIND = KIND
    REDO = "train or import the tokenizer again (everything made from it records its fingerprint)"

    @classmethod
    def config_of(cls, module: VQModel) -> dict[str, Any]:
        return to_dict(module.config)

    @classmethod
    def build(cls, folder: Path, manifest: dict) -> VQModel:
        return VQModel(cls.typed_config(folder, manifest, VQConfig))

    @classmethod
    def write_weights(cls, tmp: Path, state: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:
        save_file(dict(state), str(tmp / WEIGHTS), metadata={"fingerprint": fingerprint})

    @classmethod
    def check_weights(cls, folder: Path, manifest: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
        if fingerprint_tensors(state) != manifest["fingerprint"]:
            raise ArtifactError(f"{folder / WEIGHTS} does not match the fingerprint in its manifest (file changed or corrupt)")

    @classmethod
    def read_codebook(cls, folder: str | Path) -> tuple[torch.Tensor, str]:
        """The raw (V, D) float codebook and the tokenizer's fingerprint, reading only that tensor
        (no model is built, the other weights stay on disk)."""
        from safetensors import safe_open

        from ..filecheck import verify_file

        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise ArtifactError(f"tokenizer weights not found: {weights}")
        verify_file(folder, manifest, WEIGHTS, redo=cls.REDO)
        try:
            with safe_open(str(weights), framework="pt") as f:
                if CODEBOOK_KEY not in f.keys():
                    raise ArtifactError(f"{weights} has no tensor '{CODEBOOK_KEY}' (the VQ codebook)")
                codebook_VD = f.get_tensor(CODEBOOK_KEY)
        except ArtifactError:
            raise
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ArtifactError(f"cannot read {weights}: {e}") from None
        if codebook_VD.ndim != 2:
            raise ArtifactError(f"{weights}: '{CODEBOOK_KEY}' should be (V, D), got shape {tuple(codebook_VD.shape)}")
        return codebook_VD.float(), str(manifest["fingerprint"])


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
    """Write the tokenizer folder atomically; returns its fingerprint (`TokenizerArtifact(model).save`
    without the artifact: nothing is set on `model`)."""
    art = TokenizerArtifact(model, made_from=made_from)
    art.save(out_dir, overwrite=overwrite, info=info, extra_files=extra_files)
    return art.fingerprint


def load_tokenizer(folder: str | Path, device: str | torch.device = "cpu") -> VQModel:
    """`TokenizerArtifact.load(folder, device).module`: the bare VQModel in eval mode, for code that
    only encodes and decodes. Its fingerprint and manifest are the artifact's; load that when you need them."""
    return TokenizerArtifact.load(folder, device).module


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    check_state_dict(model, state, where=source)
    model.load_state_dict(state, strict=True)
