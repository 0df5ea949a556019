"""VQ tokenizer: images <-> grids of codebook indices (LlamaGen's VQ family)."""
from ..lazy import lazy_attributes
from .config import PRESETS, VQConfig, vq_preset

# the model and its folders need torch; the configs and presets (config.py) do not, so the command
# line reads them at once
_LAZY = {"VQModel": "model", "load_tokenizer": "artifact", "save_tokenizer": "artifact",
         "tokenizer_fingerprint": "artifact", "import_llamagen_vq": "llamagen"}

__all__ = ["PRESETS", "VQConfig", "VQModel", "vq_preset", "load_tokenizer", "save_tokenizer",
           "tokenizer_fingerprint", "import_llamagen_vq"]

__getattr__ = lazy_attributes(__name__, _LAZY)
