"""Named model sizes, and the two ways to make a model: from a preset, or from a saved config."""
from __future__ import annotations

import dataclasses

import torch

from ..config import from_dict
from ..errors import CtfgenError
from .config import KINDS, ModelConfig
from .preset_table import LLAMAGEN_NAMES, PRESETS  # torch-free: the command line reads it


def canonical_preset(preset: str) -> str:
    """"GPT-B" -> "B" (LlamaGen's names are accepted everywhere a preset is); refuses unknown names."""
    name = LLAMAGEN_NAMES.get(preset, preset)
    if name not in PRESETS:
        raise CtfgenError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)} "
                          f"(or LlamaGen's {sorted(LLAMAGEN_NAMES)})")
    return name


def make_config(kind: str, preset: str, *, vocab_size: int, num_classes: int, grid: int,
                coarse_vocab: int | None = None, **overrides) -> ModelConfig:
    preset = canonical_preset(preset)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise CtfgenError(f"unknown model option(s) {unknown}; known: {sorted(fields)}")
    args = dict(PRESETS[preset], kind=kind, preset=preset, vocab_size=vocab_size,
                num_classes=num_classes, grid=grid, coarse_vocab=coarse_vocab)
    args.update(overrides)
    return ModelConfig(**args)


def model_from_config(cfg: ModelConfig | dict, *, code_to_coarse=None) -> torch.nn.Module:
    """A fresh model for `cfg` (a ModelConfig or its to_dict form, e.g. from a checkpoint): its kind's
    class (models/config.py: KINDS). A member head built without `code_to_coarse` gets it from
    load_state_dict; other kinds refuse one.
    """
    if isinstance(cfg, dict):
        cfg = from_dict(ModelConfig, cfg, where="model config")
    if cfg.spec.member_head:
        return cfg.spec.model_class(cfg, code_to_coarse)
    if code_to_coarse is not None:
        raise CtfgenError(f"code_to_coarse is for the stage-2 (member head) model, not {cfg.kind!r}")
    return cfg.spec.model_class(cfg)


def build_model(kind: str, preset: str, *, vocab_size: int, num_classes: int, grid: int,
                coarse_vocab: int | None = None, code_to_coarse=None, **overrides) -> torch.nn.Module:
    """E.g. build_model("ar", "B", vocab_size=16384, coarse_vocab=512, num_classes=1000, grid=16).

    `overrides` set any ModelConfig field (dropouts, cls_rope, mask_to_cluster, coarse_noise, ...).
    """
    cfg = make_config(kind, preset, vocab_size=vocab_size, num_classes=num_classes, grid=grid,
                      coarse_vocab=coarse_vocab, **overrides)
    if cfg.spec.member_head and code_to_coarse is None:
        raise CtfgenError(f"the stage-2 ({kind}) model needs code_to_coarse, the (V,) map from codebook "
                          "index to coarse label")
    return model_from_config(cfg, code_to_coarse=code_to_coarse)


def count_params(kind: str, preset: str, **kwargs) -> int:
    """Parameters of a preset, measured on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        if kind in KINDS and KINDS[kind].member_head and kwargs.get("code_to_coarse") is None:
            kwargs["code_to_coarse"] = torch.zeros(kwargs["vocab_size"], dtype=torch.long)
        return build_model(kind, preset, **kwargs).num_params()
