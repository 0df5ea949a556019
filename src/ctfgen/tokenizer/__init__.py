"""VQ tokenizer: images <-> grids of codebook indices (LlamaGen's VQ family)."""
from .artifact import load_tokenizer, save_tokenizer, tokenizer_fingerprint
from .llamagen import import_llamagen_vq
from .model import PRESETS, VQConfig, VQModel, vq_preset

__all__ = ["PRESETS", "VQConfig", "VQModel", "vq_preset", "load_tokenizer", "save_tokenizer",
           "tokenizer_fingerprint", "import_llamagen_vq"]
