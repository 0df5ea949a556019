"""Best against best at a method's best checkpoint (`bench lasting`): the sampling sweep of `bench
scaling` (sweep.py) picks each method's classifier-FID settings on pipeline seeds below `sweep_seeds`
(later seeds take seed 0's picks, kept in OUT/picks.json, or read from seed 0's unit JSON in the
results directory on a machine whose study folder is new), then fresh sets at the pick and at the
paper's defaults. The uniform stage 2 has no sweep: the learned CTF's stage-1 pick, stage 2 at 1.0.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ....artifacts import atomic_write_json
from .. import sweep as sweeping
from .config import Unit


def best_vs_best(study, unit: Unit, m: str, snap: Path, pipe: dict, clf: Path | None, step: int) -> dict | None:
    """Best-against-best classifier-FID at the best checkpoint: the sweep (or seed 0's pick), then
    fresh sets at the pick and at the paper's defaults; None while seed 0's pick is not made yet."""
    from ....models.artifact import TrainedModel
    from ....sample import BaselinePipeline, CTFPipeline
    from ....tokenizer.artifact import TokenizerArtifact

    c, tok = study.cfg, pipe["tokenizer"]
    if m == "baseline":
        def make():
            return BaselinePipeline.from_folders(tokenizer=tok, baseline=snap / "baseline", device=study.device)
    elif m == "ctf-uniform":
        def make():
            return CTFPipeline(TokenizerArtifact.load(tok, study.device), ar=TrainedModel.load(snap / "ar", study.device),
                               aux=study.prior(pipe))
    else:
        def make():
            return CTFPipeline.from_folders(tokenizer=tok, ar=snap / "ar", aux=snap / "aux", device=study.device)
    meta = {"unit": unit.key, "method": m, "checkpoint_step": step, "seed_kind": "pipeline", "pipeline_seed": unit.seed}
    tag = f"{unit.key}-step{step}"
    picks_path = study.out / "picks.json"
    picks = json.loads(picks_path.read_text()) if picks_path.is_file() else {}
    if m == "ctf-uniform":  # no sweep of its own: the learned CTF's stage-1 pick, stage 2 at 1.0
        pick = picks.get(f"{unit.key}-ctf") or seed0_pick(study, unit, "ctf", picks)
        if pick is None:
            return None
        chosen = {**{k: v for k, v in pick["best"].items() if k != "stage2_temperature"}, "stage2_temperature": 1.0}
        sweep = {"best": chosen, "sweep": {}, "from": "the learned CTF's stage-1 pick"}
    elif unit.seed < c.sweep_seeds:
        sweep = sweeping.sweep(study.ws, c, m, tag, make, clf, meta)
        picks = json.loads(picks_path.read_text()) if picks_path.is_file() else {}
        atomic_write_json(picks_path, {**picks, f"{unit.key}-{m}": sweep})
    else:
        sweep = seed0_pick(study, unit, m, picks)
        if sweep is None:
            study.ws.log(f"{unit.key}: {m} samples wait for seed 0's sweep; rerun to make them")
            return None
    out = {"best_settings": sweep["best"], "sweep": sweep.get("sweep", {}), "picked_on": sweep.get("from", "own sweep")}
    defaults = sweeping.DEFAULTS["baseline" if m == "baseline" else "ctf"]
    for pick, s in (("best", sweep["best"]), ("default", None if m == "ctf-uniform" else defaults)):
        if s is not None:
            r = sweeping.evaluate(study.ws, c, f"{tag}-{m}-final-{pick}-{sweeping.tag_of(s)}", make, clf, s,
                                  final=True, metadata={**meta, "pick": pick})
            out[pick] = {"settings": s, "metrics": r["metrics"]}
    return out


def seed0_pick(study, unit: Unit, m: str, picks: dict) -> dict | None:
    """Pipeline seed 0's sweep of method `m` in `unit`'s recipe ({"best", "sweep", "from"}): from
    OUT/picks.json, else from seed 0's unit JSON in the results directory (a fresh machine continuing
    committed results has those but no picks.json; CtfgenError when that JSON was made with other
    settings); None when neither has it yet."""
    if f"{unit.recipe}-p0-{m}" in picks:
        return {**picks[f"{unit.recipe}-p0-{m}"], "from": "pipeline seed 0's sweep"}
    seed0 = replace(unit, seed=0)
    if not study.finished(seed0):
        return None
    done = (json.loads(study.result_path(seed0).read_text()).get("samples") or {}).get(m) or {}
    if "best_settings" not in done:
        return None
    return {"best": done["best_settings"], "sweep": done.get("sweep", {}),
            "from": "pipeline seed 0's sweep"}
