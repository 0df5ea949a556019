"""Generation: stage 1 + stage 2 (CTF) and the baseline sampler, pipelines, outputs, speed bench."""
from .pipeline import BaselinePipeline, CTFPipeline, Samples, load_pipeline, make_pipeline
from .sampler import SamplingConfig, generate_tokens, pick, sample_fine, sample_seed

__all__ = ["BaselinePipeline", "CTFPipeline", "Samples", "SamplingConfig", "generate_tokens", "load_pipeline",
           "make_pipeline", "pick", "sample_fine", "sample_seed"]
