"""The settings of a study's sampling sweep (sweep.py), shared by the scaling and the lasting study:
the grid it tries, the samples it draws, and the final sets. Torch-free: the command line makes
their flags."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import item_list, option

INCEPTION = ("none", "best")  # Inception FID of the final best-setting sets: none, or those


@dataclass
class SweepSettings:
    guidance: str = option("1.5,2.0,3.0", "the sweep's guidance scales", items=float, min=1.0)
    temperatures: str = option("0.9,1.0,1.1", "the sweep's temperatures (stage 1 / baseline)", items=float, min=0.0,
                               min_open=True)
    stage2_temperatures: str = option("0.9,1.0,1.1", "CTF's stage-2 temperatures, tried at its best scale and "
                                                     "temperature", items=float, min=0.0, min_open=True)
    sweep_samples_per_class: int = option(50, "samples per class of each sweep setting", min=1)
    sweep_seeds: int = option(1, "seeds with a sweep of their own; later seeds reuse seed 0's picks", min=1)
    final_samples_per_class: int = option(200, "samples per class at each method's best and default settings", min=1)
    inception: str = option("none", "Inception FID of the best-setting sets: none or best", choices=INCEPTION)
    sample_batch: int = option(250, "images per sampling batch (results do not depend on it)", min=1)


class StudyAxes:
    """The axes both studies read as lists: their comma-text fields `vocabs` and `arms` (declared by
    each study with its own defaults and choices; kept as text because results files compare it)."""

    def vocab_list(self) -> list[int]:
        return item_list(self, "vocabs")

    def arm_list(self) -> list[str]:
        return item_list(self, "arms")
