"""The settings of a sampling run, as one object that goes from the caller (command line, pipeline
folder, page, bench) to the samplers unchanged. Kept free of torch so that the command line can build
its flags from it at once.

Each field is documented once, in its `option`: the help, the allowed values and what a special
value means. `ctfgen sample` and `ctfgen pipeline make` make a flag of every field (apps/cli/sample.py),
the page of `ctfgen serve` names its inputs by `label`, and `check` refuses what the options refuse.
Adding a setting: a field here, and its use in sample/sampler.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_fields, option

SCHEDULES = ("constant", "linear")
_GREEDY = "use argmax for greedy sampling"


@dataclass
class SamplingConfig:
    """Every setting of a sampling run. Defaults are the paper's CTF settings; the baseline's are
    `SamplingConfig.baseline()` (LlamaGen: temperature 1.0). Fields without "stage2" apply to stage
    1 of CTF and to the baseline; the stage2 ones to stage 2 of CTF only."""

    guidance_scale: float = option(2.0, "classifier-free guidance of stage 1 / the baseline", label="guidance scale",
                                   min=1.0, note="1 = no guidance", flags=("--cfg",))
    guidance_schedule: str = option("constant", "constant, or linear: a ramp from 1 at the first token to the scale "
                                                "at the last", label="guidance schedule", choices=SCHEDULES)
    temperature: float = option(1.1, "stage 1 / baseline temperature", min=0.0, min_open=True, hint=_GREEDY)
    top_k: int = option(0, "stage 1 / baseline top-k", label="top-k", min=0, note="0 = off")
    top_p: float = option(1.0, "stage 1 / baseline nucleus (top-p)", label="top-p", min=0.0, min_open=True, max=1.0,
                          note="1 = off")
    argmax: bool = option(False, "greedy stage 1 / baseline")
    stage2_temperature: float = option(1.1, "CTF stage 2 temperature", label="stage-2 temperature", min=0.0,
                                       min_open=True, hint=_GREEDY)
    stage2_top_k: int = option(0, "CTF stage 2 top-k; 0: the full cluster-restricted distribution, as in the paper",
                               label="stage-2 top-k", min=0, note="0 = off")
    stage2_argmax: bool = option(False, "greedy stage 2 (the paper's ablation: much worse FID)")
    stage2_guidance_scale: float = option(1.0, "classifier-free guidance on stage 2 too (the paper leaves it open)",
                                          label="stage-2 guidance scale", min=1.0, note="1 = no guidance")

    @classmethod
    def baseline(cls, **overrides) -> "SamplingConfig":
        return cls(**{"temperature": 1.0, **overrides})

    def check(self) -> "SamplingConfig":
        """self, or CtfgenError naming the first setting out of its range."""
        return check_fields(self)
