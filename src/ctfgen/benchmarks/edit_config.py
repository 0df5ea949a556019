"""`ctfgen bench edit`'s settings (the bench: benchmarks/edit.py), torch-free so that the command line
makes its flags from them without loading the bench."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import option


@dataclass
class EditBenchConfig:
    """`ctfgen bench edit`'s settings."""

    images: int = option(1000, "test images edited (the first ones of the split)", min=1)
    seeds: tuple[int, ...] = option((0, 1), "sampling seeds of every edit", min=0, max=2**63 - 1)
    batch_size: int = option(128, "edits per batch", min=1)
    gibbs_images: int = option(100, "images that also get Gibbs sweeps (CTF layout)", min=0)
    gibbs_sweeps: int = option(1, "sweeps on them", min=0)
    vary_images: int = option(200, "sources of detail variations", min=1)
    vary_n: int = option(4, "variations and fresh samples per source, 2..32", choices=tuple(range(2, 33)),
                         metavar="N")
    vary_temperatures: tuple[float, ...] = option((0.7, 1.1, 1.5), "stage-2 temperatures of the variations",
                                                  min=0.0, min_open=True)
    figure_images: int = option(4, "sources per figure", min=1)
    settings: dict[str, Any] = option({}, "sampling overrides for both pipelines (SamplingConfig fields)")
