"""The three models: LlamaGen's c2i GPT ("baseline"), CTF stage 1 ("ar") and stage 2 ("aux")."""
from .aux import AuxTransformer
from .config import ModelConfig
from .gpt import GPT
from .presets import LLAMAGEN_NAMES, PRESETS, build_model, canonical_preset, count_params, make_config, model_from_config

__all__ = ["AuxTransformer", "GPT", "LLAMAGEN_NAMES", "ModelConfig", "PRESETS", "build_model", "canonical_preset",
           "count_params", "make_config", "model_from_config"]
