"""Generation: stage 1 + stage 2 (CTF) and the baseline sampler, pipelines, outputs, speed bench."""
from ..lazy import lazy_attributes
from .settings import SamplingConfig

# The samplers and pipelines need torch; loading them on first use lets the command line read
# SamplingConfig at once.
_LAZY = {"BaselinePipeline": "pipeline", "CTFPipeline": "pipeline", "Samples": "pipeline", "load_pipeline": "pipeline",
         "make_pipeline": "pipeline_folder", "generate_tokens": "sampler", "pick": "sampler", "sample_fine": "sampler",
         "sample_seed": "sampler"}

__all__ = ["SamplingConfig", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
