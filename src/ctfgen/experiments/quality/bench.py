"""`ctfgen bench quality`: CTF and the baseline trained side by side on the same codes, evaluated at
several checkpoints of one schedule (the paper's claims: better FID/IS at equal steps, faster
convergence), plus the paper's ablations (see ablations.py).

Its steps are the demo's (experiments/workspace.py's `Workspace`: tokenizer, codes, coarse labels, domain
classifier, `sample_and_score`); a tokenizer or a classifier made elsewhere can be passed in instead
of trained. Each model's schedule (warm-up +
cosine over `steps`) is trained in segments that stop at the checkpoints; after every segment both
pipelines sample `samples_per_class` images per class and are evaluated, and the result is saved
as `evals/<name>-step<N>.json`. A rerun skips every finished segment and evaluation.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from ..workspace import Workspace
from .config import QualityConfig


class QualityBench:
    """The comparison and the ablations, made of the steps of a `Workspace` named "quality"
    (settings in quality_config.json, results in evals/, samples in samples/)."""

    def __init__(self, cfg: QualityConfig, out: str | Path, *, device="cpu", progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg = cfg.check()
        self.ws = Workspace(self.cfg, out, name="quality", seed=self.cfg.seed, preset=self.cfg.preset, device=device,
                            progress=progress, log=log)
        self.out = self.ws.out

    # ---- the comparison

    def compare(self, tok: Path, codes: Path, coarse: Path, clf: Path) -> dict[str, list[dict]]:
        """Both models trained to each checkpoint in turn, evaluated there: {name: [result, ...]}."""
        c, ws = self.cfg, self.ws
        stops = c.checkpoint_steps()
        curves: dict[str, list[dict]] = {"ctf": [], "baseline": []}
        for step in stops:
            last = step == stops[-1]
            done = {n: (self.out / "evals" / f"{n}-step{step}.json").is_file() for n in curves}
            runs: dict[str, Path] = {}  # an evaluated checkpoint needs no models (they moved on)
            if not all(done.values()):
                runs = {kind: ws.train(kind, codes, coarse, stop_after=step) for kind in ("ar", "aux", "baseline")}
            for name in curves:
                res = ws.sample_and_score(f"{name}-step{step}", partial(_pipeline, name, tok, runs, ws.device), clf,
                                          samples_per_class=c.samples_per_class,
                                          inception=c.inception == "all" or (c.inception == "last" and last),
                                          metadata={"train_steps": step, "schedule_steps": c.steps, "preset": c.preset},
                                          grid=last, timing=f"sample+eval {name} step {step}")
                curves[name].append(res)
            ws.save_timings()
        return curves

    def run(self, ablations: list[str] = ()) -> Path:
        from .ablations import run_ablation
        from .report import write_quality_report

        c, ws = self.cfg, self.ws
        t0 = ws.begin()
        tok = ws.tokenizer(existing=c.tokenizer)
        codes = ws.codes(tok, views=c.views)
        coarse = ws.coarse_map(tok, method=c.cluster_method, k=c.k)
        clf = ws.classifier(existing=c.classifier)
        curves = self.compare(tok, codes, coarse, clf)
        tables = {name: run_ablation(ws, name, tok=tok, codes=codes, clf=clf) for name in ablations}
        ws.end(t0)
        page = write_quality_report(self.out, cfg=c, curves=curves, ablations=tables, timings=ws.timings)
        ws.log(f"done in {ws.timings['this run (total)']:.0f} s: {page}")
        return page


def _pipeline(name: str, tok: Path, runs: dict[str, Path], device):
    """The "ctf" or "baseline" pipeline of the models in `runs`, built in memory."""
    from ...sample import BaselinePipeline, CTFPipeline

    if name == "ctf":
        return CTFPipeline.from_folders(tokenizer=tok, ar=runs["ar"], aux=runs["aux"], device=device)
    return BaselinePipeline.from_folders(tokenizer=tok, baseline=runs["baseline"], device=device)
