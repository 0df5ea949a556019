"""`ctfgen bench quality`: CTF against the baseline at equal training steps, and the paper's ablations."""
from .ablations import ABLATIONS
from .ablations import resolve as resolve_ablations
from .config import QualityConfig


def __getattr__(name: str):
    # The bench itself needs torch; importing it lazily lets the command line read QualityConfig
    # and ABLATIONS at once.
    if name == "QualityBench":
        from .bench import QualityBench

        return QualityBench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ABLATIONS", "QualityBench", "QualityConfig", "resolve_ablations"]
