"""`ctfgen bench quality`: CTF against the baseline at equal training steps, and the paper's ablations."""
from .ablations import ABLATIONS
from .ablations import resolve as resolve_ablations
from .bench import QualityBench, QualityConfig

__all__ = ["ABLATIONS", "QualityBench", "QualityConfig", "resolve_ablations"]
