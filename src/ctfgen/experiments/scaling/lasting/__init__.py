"""`ctfgen bench lasting`: CTF against the baseline trained far longer, at larger models and longer
sequences, with whole-pipeline seeds (config.py: the plan; study.py; curves.py; report.py; plan.py)."""
from .config import LastingConfig, Unit
from .study import LastingStudy

__all__ = ["LastingConfig", "LastingStudy", "Unit"]
