"""`ctfgen demo`: the whole pipeline on the embedded Fashion-MNIST default, small enough for a laptop CPU.

tokenizer -> codes -> coarse labels -> stage 1 + stage 2 (CTF) and the baseline -> samples ->
evaluation -> a report folder (Markdown page, side-by-side grids, metrics table, loss curves).
Every step (experiments/workspace.py's `Workspace`) writes its own artifact folder under `out`; a rerun skips
the finished ones (training runs resume from their last checkpoint), so an interrupted demo picks up
where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import option
from .demo_report import COARSE_FIGURE, COARSE_FIGURE_COMMAND
from .recipe import SingleRecipe
from .workspace import Workspace  # noqa: F401  (the figure the report shows)


@dataclass
class DemoConfig(SingleRecipe):
    """The demo: the recipe's defaults (experiments/recipe.py), sized for a 2-core CPU, and how much it samples."""

    samples_per_class: int = option(50, "samples per class for each of CTF and the baseline", min=1)
    # FID with the standard Inception network: off by default, since on a 2-core CPU its features
    # cost ~0.15 s per image (reference included); `ctfgen eval` computes it for any samples folder.
    inception: bool = option(False, "also compute FID with the standard Inception network (when its weights are "
                                    "installed)")


class Demo:
    """The demo's steps, in a `Workspace` named "demo" (settings in demo_config.json)."""

    def __init__(self, cfg: DemoConfig, out: str | Path, *, device="cpu", progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.ws = Workspace(cfg, out, name="demo", seed=cfg.seed, preset=cfg.preset, device=device, progress=progress,
                            log=log)
        self.out = self.ws.out

    def sample_and_evaluate(self, pipes: dict[str, Path], clf_dir: Path) -> dict[str, dict]:
        """eval-<name>.json and report/samples-<name>.png of each pipeline folder in `pipes`."""
        from ..evaluate import default_inception_path
        from ..sample import load_pipeline

        c, ws = self.cfg, self.ws
        inception = bool(c.inception and default_inception_path())
        return {name: ws.sample_and_score(name, lambda folder=folder: load_pipeline(folder, device=ws.device), clf_dir,
                                          samples_per_class=c.samples_per_class, path=self.out / f"eval-{name}.json",
                                          inception=inception, grid=True, keep_samples=False,
                                          metadata={"pipeline": str(folder)}, timing=f"sample+eval {name}")
                for name, folder in pipes.items()}

    def coarse_figure(self, ctf_dir: Path, *, per_class: int = 2) -> Path:
        """report/coarse-to-fine.png: coarse-label map, coarse image and final image of `per_class` CTF
        samples of every class; the same file as `ctfgen sample --pipeline CTF_DIR --per-class 2
        --seed SEED --grid-scale 2 --coarse-grid PNG` (COARSE_FIGURE_COMMAND)."""
        from ..sample import load_pipeline
        from ..sample.coarse_view import coarse_views
        from ..sample.outputs import save_coarse_grid

        ws = self.ws
        path = self.out / "report" / COARSE_FIGURE
        if path.is_file():
            ws.log(f"coarse-to-fine figure: reusing {path}")
            return path
        ws.log(f"coarse-to-fine figure -> {path}")
        t0 = time.time()
        pipe = load_pipeline(ctf_dir, device=ws.device)
        labels = [k for k in range(pipe.num_classes) for _ in range(per_class)]
        samples = pipe.generate(labels, seed=self.cfg.seed, batch_size=64)
        save_coarse_grid(path, coarse_views(pipe, samples), samples.labels, scale=2)
        ws.timings["coarse-to-fine figure"] = round(time.time() - t0, 1)
        return path

    # ------------------------------------------------------------------ all
    def run(self) -> Path:
        ws = self.ws
        t0 = ws.begin()
        tok = ws.tokenizer()
        codes = ws.codes(tok, views=self.cfg.views)
        coarse = ws.coarse_map(tok, method=self.cfg.cluster_method, k=self.cfg.k)
        runs = {kind: ws.train(kind, codes, coarse) for kind in ("ar", "aux", "baseline")}
        pipes = ws.pipelines(tok, runs)
        clf = ws.classifier()
        results = self.sample_and_evaluate(pipes, clf)
        self.coarse_figure(pipes["ctf"])
        ws.end(t0)
        from .demo_report import write_demo_report

        page = write_demo_report(self.out, results=results, runs=runs, tokenizer=tok, timings=ws.timings, cfg=self.cfg)
        ws.log(f"done in {ws.timings['this run (total)']:.0f} s: {page}")
        return page
