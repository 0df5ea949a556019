"""`ctfgen bench scaling`: CTF against the baseline as the codebook grows (study.py, report.py)."""
from .study import ARMS, ScalingConfig, ScalingStudy

__all__ = ["ARMS", "ScalingConfig", "ScalingStudy"]
