"""The prepared GPU check (`ctfgen bench gpu`, scripts/gpu_check.sh); see check.py."""
from .check import GpuCheck, Plan, full_plan, quick_plan

__all__ = ["GpuCheck", "Plan", "full_plan", "quick_plan"]
