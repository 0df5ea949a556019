"""ctfgen: class-conditional autoregressive image generation with coarse-to-fine token prediction."""
__version__ = "0.1.0"

from .errors import ArtifactError, CtfgenError  # noqa: E402

__all__ = ["ArtifactError", "CtfgenError", "__version__"]
