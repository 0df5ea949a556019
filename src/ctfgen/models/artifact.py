"""The trained-model folder (kind "model"): what `ctfgen train` writes and samplers, evaluation and
pipelines load, without going through the trainer.

    folder/manifest.json      config.model (ModelConfig), made_from {tokenizer, codes, coarse_map}
    folder/model.safetensors  weights
    folder/ema.safetensors    EMA weights, when the run kept an EMA

A `ctfgen train` folder adds its training state beside these (train/checkpoint.py); a pipeline
folder copies only these files (MODEL_FILES).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..artifacts import MANIFEST, WEIGHTS, ModuleArtifact, check_made_from, fingerprint_tensors
from ..errors import ArtifactError

KIND = "model"
EMA_WEIGHTS = "ema.safetensors"
MODEL_FILES = (MANIFEST, WEIGHTS, EMA_WEIGHTS)  # what inference reads; never the training state


def model_config_dict(model: torch.nn.Module) -> dict:
    cfg = model.config
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    from ..config import to_dict

    return to_dict(cfg)


def model_fingerprint(state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any] | None) -> str:
    """A model folder's fingerprint: its weights and its config.model."""
    return fingerprint_tensors(state, extra=model_config)


class TrainedModel(ModuleArtifact):
    """A baseline, stage-1 ("ar") or stage-2 ("aux") model and its folder."""

    KIND = KIND
    REDO = "retrain it, or copy the run folder again"

    @classmethod
    def config_of(cls, module: torch.nn.Module) -> dict[str, Any]:
        return {"model": model_config_dict(module)}

    @classmethod
    def fingerprint_of(cls, state: Mapping[str, torch.Tensor], module: torch.nn.Module) -> str:
        return model_fingerprint(state, model_config_dict(module))

    @classmethod
    def build(cls, folder: Path, manifest: dict) -> torch.nn.Module:
        from . import model_from_config
        from .config import ModelConfig

        return model_from_config(cls.typed_config(folder, manifest, ModelConfig, key="model"))

    @property
    def kind(self) -> str:
        return str((self.manifest or {}).get("config", {}).get("model", {}).get("kind")
                   or getattr(self.module.config, "kind", ""))

    @classmethod
    def check(cls, folder: str | Path, manifest: Mapping[str, Any], *, expect_kind: str | None = None,
              made_from: Mapping[str, str] | None = None) -> None:
        """Refuse a model of another kind, or one made from other parents (e.g. {"coarse_map": fp})."""
        folder = Path(folder)
        cfg = manifest.get("config", {})
        if "model" not in cfg:
            raise ArtifactError(f"{folder / MANIFEST}: config lacks the model config ('model')")
        kind = cfg["model"].get("kind")
        if expect_kind is not None and kind != expect_kind:
            raise ArtifactError(f"{folder} holds a '{kind}' model, expected '{expect_kind}'")
        for key, fp in (made_from or {}).items():
            check_made_from(f"{key} of model {folder}", fp, manifest.get("made_from", {}).get(key, "<none>"),
                            hint=f"this model was trained on another {key}")

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", *, ema: bool | None = None,
             expect_kind: str | None = None, made_from: Mapping[str, str] | None = None) -> "TrainedModel":
        """The model in eval mode on `device`, with its manifest.

        ema: load the EMA weights (None: when the folder has them). expect_kind: refuse other model
        kinds ("ar", "aux", "baseline"). made_from: fingerprints it must have been made from.
        Errors are ArtifactErrors naming the file and the field.
        """
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        cls.check(folder, manifest, expect_kind=expect_kind, made_from=made_from)
        use_ema = (folder / EMA_WEIGHTS).is_file() if ema is None else ema
        name = EMA_WEIGHTS if use_ema else WEIGHTS
        if use_ema and not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} not found (this run kept no EMA; pass ema=False)")
        art = super().load(folder, device, weights=name, manifest=manifest)
        art.module.manifest = manifest  # what it was made from travels with it (pipelines save it again)
        return art


def load_model(folder: str | Path, device: str | torch.device = "cpu", *, ema: bool | None = None,
               expect_kind: str | None = None, made_from: Mapping[str, str] | None = None) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, manifest) of a model folder; see TrainedModel.load."""
    art = TrainedModel.load(folder, device, ema=ema, expect_kind=expect_kind, made_from=made_from)
    return art.module, art.manifest
