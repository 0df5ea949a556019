"""The trained-model folder (kind "model"): what `ctfgen train` writes and samplers, evaluation and
pipelines load, without going through the trainer.

    folder/manifest.json      config.model (ModelConfig), made_from {tokenizer, codes, coarse_map}
    folder/model.safetensors  weights
    folder/ema.safetensors    EMA weights, when the run kept an EMA

A `ctfgen train` folder adds its training state beside these (train/checkpoint.py); a pipeline
folder copies only these files (MODEL_FILES).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from ..artifacts import MANIFEST, WEIGHTS, ModuleArtifact, check_made_from, fingerprint_tensors
from ..errors import ArtifactError

KIND = "model"
EMA_WEIGHTS = "ema.safetensors"
MODEL_FILES = (MANIFEST, WEIGHTS, EMA_WEIGHTS)  # what inference reads; never the training state
# The EMA is loaded by default only when it has moved at least this fraction of the way from the
# initial to the trained weights (manifest info "ema_moved", ||ema - init|| / ||raw - init||,
# train/parallel.py ema_movement). Below half way it lies nearer the random initial weights than the
# trained ones. Measured on tests/test_ema.py's case (100 steps at --ema 0.9999): without the decay's
# warm-up the EMA had moved 0.0064 and predicted near-uniformly (1.380 nats per token against
# ln 4 = 1.386; raw weights 0.192); with it, 0.949 (0.245 nats). An EMA that follows its run is near 1.
# Folders written before the measure existed (0.1.0) lack it and keep loading their EMA as before.
EMA_TRUSTED = 0.5
log = logging.getLogger(__name__)


def untrusted_ema_note(moved: float) -> str | None:
    """The warning for an EMA that moved `moved` of the way (see EMA_TRUSTED), None when trusted."""
    if moved >= EMA_TRUSTED:
        return None
    return (f"the EMA moved only {moved:.2%} of the way from the initial to the trained weights (below "
            f"{EMA_TRUSTED:.0%}): it is still mostly the initial weights, so samplers and evaluation load the raw "
            "weights by default; train longer or with a lower --ema decay")


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
    FILES = MODEL_FILES
    loaded_weights: str | None = None  # WEIGHTS or EMA_WEIGHTS: the file `load` read; None in memory

    @classmethod
    def stage2_config(cls, manifest: dict, folder: str | Path = "stage 2"):
        """The ModelConfig of a stage-2 model folder (models/stage2.py: stage2_config); ArtifactError
        for a model of another kind."""
        from .config import ModelConfig

        kind = manifest.get("config", {}).get("model", {}).get("kind")
        cfg = cls.typed_config(folder, manifest, ModelConfig, key="model")
        if not cfg.spec.member_head:
            raise ArtifactError(f"{folder}: expected a stage-2 ('aux') model, got kind {kind!r}")
        return cfg

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
        """The artifact: `.module` the model in eval mode on `device`, `.manifest` what it was made
        from; `.loaded_weights` names the file its weights came from (also logged).

        ema: load the EMA weights (True), the raw ones (False), or (None) the EMA when the folder has
        one that is trusted: one whose manifest says it moved at least EMA_TRUSTED of the way to the
        trained weights, or says nothing (folders of 0.1.0); an untrusted one is passed over with a
        note on stderr. expect_kind: refuse other model kinds ("ar", "aux", "baseline"). made_from:
        fingerprints it must have been made from. Errors are ArtifactErrors naming the file and field.
        """
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        cls.check(folder, manifest, expect_kind=expect_kind, made_from=made_from)
        use_ema = ema
        if ema is None:
            moved = (manifest.get("info") or {}).get("ema_moved")
            use_ema = (folder / EMA_WEIGHTS).is_file() and (moved is None or moved >= EMA_TRUSTED)
            if (folder / EMA_WEIGHTS).is_file() and not use_ema:
                print(f"note: {folder}: loading the raw weights ({WEIGHTS}), not the EMA: {untrusted_ema_note(moved)}; "
                      "ema=True (`--ema yes`) loads it anyway", file=sys.stderr)
        name = EMA_WEIGHTS if use_ema else WEIGHTS
        if use_ema and not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} not found (this run kept no EMA; pass ema=False)")
        art = super().load(folder, device, weights=name, manifest=manifest)
        art.loaded_weights = name
        log.info("%s: loaded %s", folder, name)
        return art
