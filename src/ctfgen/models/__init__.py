"""The three models: LlamaGen's c2i GPT ("baseline"), CTF stage 1 ("ar") and stage 2 ("aux")."""
from ..lazy import lazy_attributes
from .config import KINDS, Kind, ModelConfig

# The models need torch; loading them on first use lets the command line read KINDS and ModelConfig
# at once.
_LAZY = {"AuxTransformer": "aux", "GPT": "gpt", "LLAMAGEN_NAMES": "preset_table", "PRESETS": "preset_table",
         "build_model": "presets", "canonical_preset": "presets", "count_params": "presets", "make_config": "presets",
         "model_from_config": "presets"}

__all__ = ["KINDS", "Kind", "ModelConfig", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
