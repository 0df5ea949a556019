"""The sampling sweep of a study (`bench scaling`, `bench lasting`): each method's best classifier-FID
settings (guidance scale x temperature, then CTF's stage-2 temperature) on a sweep's sample sets, then
fresh sets at the pick and at the paper's defaults. `cfg` is the study's settings, a `SweepSettings`
(sweep_settings.py: the grid, the sample counts and batch, the Inception choice) as ScalingConfig
and LastingConfig are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...config import item_list
from ..workspace import Workspace
from .sweep_settings import SweepSettings

PRIOR_ARMS = ("uniform", "frequency")  # parameter-free stage 2 on the k-means stage 1


# paper defaults (PAPER.md): CFG 2.0; CTF temperature 1.1 and stage-2 temperature 1.1; LlamaGen 1.0
DEFAULTS = {"ctf": {"guidance_scale": 2.0, "temperature": 1.1, "stage2_temperature": 1.1},
            "baseline": {"guidance_scale": 2.0, "temperature": 1.0}}


def tag_of(settings: dict) -> str:
    short = {"guidance_scale": "g", "temperature": "t", "stage2_temperature": "s2t"}
    return "-".join(f"{short[k]}{v:g}" for k, v in settings.items())


def evaluate(ws: Workspace, cfg: SweepSettings, tag: str, pipe: Callable[[], Any], clf: Path, settings: dict, *,
             final: bool, metadata: dict) -> dict:
    """The sweep's sets with sampling seed 0, the final ones with seed 1 (the pick's luck does not
    carry over); cached as evals/<tag>.json, samples in samples/<tag>.npz."""
    return ws.sample_and_score(
        tag, pipe, clf, samples_per_class=cfg.final_samples_per_class if final else cfg.sweep_samples_per_class,
        seed=1 if final else 0, batch_size=cfg.sample_batch, settings=settings, metadata=metadata,
        inception=final and cfg.inception == "best" and metadata.get("pick") == "best")


def sweep(ws: Workspace, cfg: SweepSettings, name: str, unit: str, pipe: Callable[[], Any], clf: Path,
          meta: dict) -> dict:
    """Best classifier-FID settings of one method: (scale x temperature), then stage-2 temperature."""
    results = {}

    def score(s: dict) -> float:
        tag = f"{unit}-{name}-sweep-{tag_of(s)}"
        r = evaluate(ws, cfg, tag, pipe, clf, s, final=False, metadata={**meta, "sweep": True})
        results[tag] = r
        return r["metrics"]["fid_classifier"]

    grid = [{"guidance_scale": g, "temperature": t} for g in item_list(cfg, "guidance")
            for t in item_list(cfg, "temperatures")]
    s2 = name.startswith("ctf") and not name.endswith(PRIOR_ARMS)
    if s2:
        grid = [{**s, "stage2_temperature": DEFAULTS["ctf"]["stage2_temperature"]} for s in grid]
    best = min(grid, key=score)
    if s2:
        best = min([{**best, "stage2_temperature": t} for t in item_list(cfg, "stage2_temperatures")], key=score)
    return {"best": best, "sweep": {k: v["metrics"]["fid_classifier"] for k, v in results.items()}}
