"""`ctfgen demo`: the whole pipeline on the embedded Fashion-MNIST default, small enough for a laptop CPU.

tokenizer -> codes -> coarse labels -> stage 1 + stage 2 (CTF) and the baseline -> samples ->
evaluation -> a report folder (Markdown page, side-by-side grids, metrics table, loss curves).
Every step (experiment.py's `Workspace`) writes its own artifact folder under `out`; a rerun skips
the finished ones (training runs resume from their last checkpoint), so an interrupted demo picks up
where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data import DataConfig
from .experiment import Workspace
from .report import COARSE_FIGURE, COARSE_FIGURE_COMMAND  # noqa: F401  (the figure the report shows)


@dataclass
class DemoConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer_steps: int = 400
    tokenizer_batch: int = 32
    views: str = "none"  # one view per image keeps encoding quick; "flip" doubles the codes
    # training images encoded (0: all): 200 steps of 64 draw 12,800 sequences per model, so 20,000
    # codes are more than each model sees, at a third of the encoding time of all 60,000
    code_images: int = 20000
    k: int = 128  # the paper's 32 codes per coarse label for a 4096-entry codebook
    cluster_method: str = "kmeans"
    preset: str = "tiny"
    steps: int = 200  # optimizer steps for each of stage 1, stage 2 and the baseline
    batch_size: int = 64
    # per 256 samples (4e-3 at batch 64). 200 steps want a high rate: in a sweep on one set of codes
    # (docs/RESULTS.md, "The demo") classifier-FID fell for CTF and the baseline alike from 2e-3 up to 1.6e-2
    lr: float = 1.6e-2
    warmup: int = 30
    samples_per_class: int = 50
    classifier_epochs: int = 1
    # FID with the standard Inception network: off by default, since on a 2-core CPU its features
    # cost ~0.15 s per image (reference included); `ctfgen eval` computes it for any samples folder.
    inception: bool = False
    reference_images: int = 5000  # test-split images the samples are compared with
    seed: int = 0




class Demo:
    """The demo's steps, in a `Workspace` named "demo" (settings in demo_config.json)."""

    def __init__(self, cfg: DemoConfig, out: str | Path, *, device="cpu", progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.ws = Workspace(cfg, out, name="demo", device=device, progress=progress, log=log)
        self.out = self.ws.out

    def sample_and_evaluate(self, pipes: dict[str, Path], clf_dir: Path) -> dict[str, dict]:
        """eval-<name>.json and report/samples-<name>.png of each pipeline folder in `pipes`."""
        from .evaluate import default_inception_path
        from .sample import load_pipeline

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
        from .sample import load_pipeline
        from .sample.coarse_view import coarse_views
        from .sample.outputs import save_coarse_grid

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
        codes = ws.codes(tok)
        coarse = ws.coarse_map(tok)
        runs = {kind: ws.train(kind, codes, coarse) for kind in ("ar", "aux", "baseline")}
        pipes = ws.pipelines(tok, runs)
        clf = ws.classifier()
        results = self.sample_and_evaluate(pipes, clf)
        self.coarse_figure(pipes["ctf"])
        ws.end(t0)
        from .report import write_demo_report

        page = write_demo_report(self.out, results=results, runs=runs, tokenizer=tok, timings=ws.timings, cfg=self.cfg)
        ws.log(f"done in {ws.timings['this run (total)']:.0f} s: {page}")
        return page
