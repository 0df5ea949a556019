"""Generation: stage 1 + stage 2 (CTF) and the baseline sampler, pipelines, outputs, speed bench."""
from .settings import SamplingConfig

# The samplers and pipelines need torch; loading them on first use lets the command line read
# SamplingConfig at once.
_LAZY = {"BaselinePipeline": "pipeline", "CTFPipeline": "pipeline", "Samples": "pipeline", "load_pipeline": "pipeline",
         "make_pipeline": "pipeline", "generate_tokens": "sampler", "pick": "sampler", "sample_fine": "sampler",
         "sample_seed": "sampler"}

__all__ = ["SamplingConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
