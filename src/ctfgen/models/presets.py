"""Named model sizes, and the two ways to make a model: from a preset, or from a saved config."""
from __future__ import annotations

import dataclasses

import torch

from ..config import from_dict
from ..errors import CtfgenError
from .config import KINDS, ModelConfig

# (n_layer, n_head, dim). B/L/XL/XXL/3B are the GPT sizes LlamaGen released (its 3B c2i model
# has head_dim 100); the paper's stage-2 model is L size ("aux-L", 343M in the paper) and its
# ablation uses a B-size one ("aux-B"). tiny and small are for the 32x32 Fashion-MNIST default
# (8x8 tokens) and train in minutes on a CPU.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, dim=128),
    "small": dict(n_layer=8, n_head=8, dim=256),
    "B": dict(n_layer=12, n_head=12, dim=768),
    "L": dict(n_layer=24, n_head=16, dim=1024),
    "XL": dict(n_layer=36, n_head=20, dim=1280),
    "XXL": dict(n_layer=48, n_head=24, dim=1536),
    "3B": dict(n_layer=24, n_head=32, dim=3200),
    "aux-B": dict(n_layer=12, n_head=12, dim=768),
    "aux-L": dict(n_layer=24, n_head=16, dim=1024),
}
# LlamaGen's own names (its GPT_models registry, the `gpt_model` its checkpoints record)
LLAMAGEN_NAMES = {"GPT-B": "B", "GPT-L": "L", "GPT-XL": "XL", "GPT-XXL": "XXL", "GPT-3B": "3B"}


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
