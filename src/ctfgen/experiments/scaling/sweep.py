"""The sampling sweep of a study (`bench scaling`, `bench lasting`): each method's best classifier-FID
settings (guidance scale x temperature, then CTF's stage-2 temperature) on a sweep's sample sets, then
fresh sets at the pick and at the paper's defaults. `cfg` is the study's settings: guidance,
temperatures, stage2_temperatures, sweep_samples_per_class, final_samples_per_class, sample_batch and
inception.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...errors import CtfgenError
from ..workspace import Workspace

PRIOR_ARMS = ("uniform", "frequency")  # parameter-free stage 2 on the k-means stage 1


def values(text: str, name: str, cast: type = float) -> list:
    """The comma-separated values of the setting `name` (floats, or ints with `cast=int`), at least one."""
    try:
        out = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        kind = "integers" if cast is int else "numbers"
        raise CtfgenError(f"{name}: expected comma-separated {kind}, got {text!r}") from None
    if not out:
        raise CtfgenError(f"{name}: give at least one value")
    return out


def floats(text: str, name: str) -> list[float]:
    return values(text, name, float)


# paper defaults (PAPER.md): CFG 2.0; CTF temperature 1.1 and stage-2 temperature 1.1; LlamaGen 1.0
DEFAULTS = {"ctf": {"guidance_scale": 2.0, "temperature": 1.1, "stage2_temperature": 1.1},
            "baseline": {"guidance_scale": 2.0, "temperature": 1.0}}


def tag_of(settings: dict) -> str:
    short = {"guidance_scale": "g", "temperature": "t", "stage2_temperature": "s2t"}
    return "-".join(f"{short[k]}{v:g}" for k, v in settings.items())


def evaluate(ws: Workspace, cfg, tag: str, pipe: Callable[[], Any], clf: Path, settings: dict, *, final: bool,
             metadata: dict) -> dict:
    """The sweep's sets with sampling seed 0, the final ones with seed 1 (the pick's luck does not
    carry over); cached as evals/<tag>.json, samples in samples/<tag>.npz."""
    return ws.sample_and_score(
        tag, pipe, clf, samples_per_class=cfg.final_samples_per_class if final else cfg.sweep_samples_per_class,
        seed=1 if final else 0, batch_size=cfg.sample_batch, settings=settings, metadata=metadata,
        inception=final and cfg.inception == "best" and metadata.get("pick") == "best")


def sweep(ws: Workspace, cfg, name: str, unit: str, pipe: Callable[[], Any], clf: Path, meta: dict) -> dict:
    """Best classifier-FID settings of one method: (scale x temperature), then stage-2 temperature."""
    results = {}

    def score(s: dict) -> float:
        tag = f"{unit}-{name}-sweep-{tag_of(s)}"
        r = evaluate(ws, cfg, tag, pipe, clf, s, final=False, metadata={**meta, "sweep": True})
        results[tag] = r
        return r["metrics"]["fid_classifier"]

    grid = [{"guidance_scale": g, "temperature": t} for g in floats(cfg.guidance, "guidance")
            for t in floats(cfg.temperatures, "temperatures")]
    s2 = name.startswith("ctf") and not name.endswith(PRIOR_ARMS)
    if s2:
        grid = [{**s, "stage2_temperature": DEFAULTS["ctf"]["stage2_temperature"]} for s in grid]
    best = min(grid, key=score)
    if s2:
        best = min([{**best, "stage2_temperature": t} for t in floats(cfg.stage2_temperatures, "stage2_temperatures")],
                   key=score)
    return {"best": best, "sweep": {k: v["metrics"]["fid_classifier"] for k, v in results.items()}}
