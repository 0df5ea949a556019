"""`ctfgen bench quality`: CTF and the baseline trained side by side on the same codes, evaluated at
several checkpoints of one schedule (the paper's claims: better FID/IS at equal steps, faster
convergence), plus the paper's ablations (see ablations.py).

Stages are the demo's (tokenizer, codes, coarse labels, domain classifier), so a tokenizer or a
classifier made elsewhere can be passed in instead of trained. Each model's schedule (warm-up +
cosine over `steps`) is trained in segments that stop at the checkpoints; after every segment both
pipelines sample `samples_per_class` images per class and are evaluated, and the result is saved
as `evals/<name>-step<N>.json`. A rerun skips every finished segment and evaluation.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_bytes, atomic_write_json, read_manifest
from ..config import to_dict
from ..demo import Demo
from ..evaluate.core import RESULT_FORMAT
from .config import INCEPTION_WHEN, QualityConfig  # noqa: F401 (re-exported)

# metrics whose computation changed since evaluation format 1 (classifier-IS splits)
STALE_METRICS = ("is_classifier", "is_classifier_std")


class QualityBench(Demo):
    name = "quality"

    def __init__(self, cfg: QualityConfig, out: str | Path, **kwargs):
        super().__init__(cfg.check(), out, **kwargs)
        self._eval_tools = None

    # ---- inputs made elsewhere, when given

    def tokenizer(self) -> Path:
        if not self.cfg.tokenizer:
            return super().tokenizer()
        path = Path(self.cfg.tokenizer)
        read_manifest(path, "tokenizer")  # a clear error if it is not a tokenizer folder
        self.log(f"[quality] tokenizer: using {path}")
        return path

    def classifier(self) -> Path:
        if not self.cfg.classifier:
            return super().classifier()
        path = Path(self.cfg.classifier)
        read_manifest(path, "classifier")
        self.log(f"[quality] domain classifier: using {path}")
        return path

    # ---- evaluation

    def eval_tools(self, clf_dir: Path):
        """Classifier, reference and (lazily) Inception, loaded once for every evaluation."""
        if self._eval_tools is None:
            from ..evaluate import classifier_info, load_classifier, reference_from_dataset

            clf, manifest = load_classifier(clf_dir)
            ref = reference_from_dataset(self.cfg.data, "test", max_images=self.cfg.reference_images or None)
            self._eval_tools = {"classifier": clf, "classifier_info": classifier_info(manifest, str(clf_dir)),
                                "reference": ref, "inception": None}
        return self._eval_tools

    def inception(self):
        from ..evaluate import InceptionFeatures

        tools = self._eval_tools
        if tools["inception"] is None:
            tools["inception"] = InceptionFeatures()
        return tools["inception"]

    def evaluate(self, tag: str, pipe, clf_dir: Path, *, samples_per_class: int, inception: bool,
                 settings: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                 grid: bool = False) -> dict:
        """Sample class-balanced images with `pipe` and evaluate them; cached as evals/<tag>.json."""
        from ..evaluate import cache_dir, evaluate_images
        from ..sample.outputs import grid_image, png_bytes, save_npz

        path = self.out / "evals" / f"{tag}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            return result if result.get("format") == RESULT_FORMAT else self.update_stale(path, result, clf_dir)
        tools = self.eval_tools(clf_dir)
        labels = [k for k in range(pipe.num_classes) for _ in range(samples_per_class)]
        self.log(f"[quality] sample + evaluate {tag}: {len(labels)} images")
        t0 = time.time()
        samples = pipe.generate(labels, seed=self.cfg.seed, batch_size=64, progress=self.progress, **(settings or {}))
        sample_s = time.time() - t0
        if grid:
            per_class = min(10, samples_per_class)
            show = np.concatenate([np.arange(per_class) + k * samples_per_class for k in range(pipe.num_classes)])
            atomic_write_bytes(self.out / "report" / f"samples-{tag}.png",
                               png_bytes(grid_image(samples.images[show], samples.labels[show], scale=2)))
        save_npz(self.out / "samples" / f"{tag}.npz", samples)  # ADM format: re-scorable, and for other evaluators
        meta = {"pipeline": pipe.type, "models": pipe.fingerprints, "folders": {k: str(v) for k, v in pipe.folders.items()},
                "seed": self.cfg.seed, "samples_per_class": samples_per_class, "sampling": to_dict(samples.settings),
                "sample_seconds": round(sample_s, 1), "images_per_second": round(len(labels) / sample_s, 2),
                **(metadata or {})}
        result = evaluate_images(samples.images, samples.labels, reference=tools["reference"],
                                 classifier=tools["classifier"], classifier_info=tools["classifier_info"],
                                 inception=self.inception() if inception else None, cache=cache_dir(),
                                 metadata=meta, progress=self.progress)
        atomic_write_json(path, result)
        return result

    def update_stale(self, path: Path, result: dict, clf_dir: Path) -> dict:
        """A result of an older evaluation format: its classifier metrics are recomputed from the
        saved samples when they exist (Inception FID, unaffected, is kept); otherwise the metrics
        the format change fixed are withdrawn, their old values kept under `withdrawn`."""
        from ..evaluate import evaluate_images
        from ..evaluate.inputs import load_samples

        old = {k: result["metrics"].pop(k) for k in STALE_METRICS if k in result["metrics"]}
        npz = self.out / "samples" / f"{path.stem}.npz"
        if npz.is_file():
            tools = self.eval_tools(clf_dir)
            s = load_samples(npz)
            images = s.images[..., :1] if self.cfg.data.channels == 1 else s.images  # npz holds RGB
            new = evaluate_images(images, s.labels, reference=tools["reference"], classifier=tools["classifier"],
                                  classifier_info=tools["classifier_info"], progress=self.progress)
            result["metrics"].update(new["metrics"])
            result["rescored"] = {"from": str(npz), "format_was": result.get("format"), "old_values": old}
            self.log(f"[quality] {path.name}: classifier metrics recomputed from {npz.name} (format {RESULT_FORMAT})")
        else:
            result["withdrawn"] = {"format_was": result.get("format"), "old_values": old,
                                   "why": "classifier-IS of evaluation format 1 split the samples in order; "
                                          "these samples were not kept, so it cannot be recomputed"}
            self.log(f"[quality] {path.name}: classifier-IS withdrawn (older format, samples not kept)")
        result["format"] = RESULT_FORMAT
        atomic_write_json(path, result)
        return result

    # ---- the comparison

    def compare(self, tok: Path, codes: Path, coarse: Path, clf: Path) -> dict[str, list[dict]]:
        """Both models trained to each checkpoint in turn, evaluated there: {name: [result, ...]}."""
        from ..sample import BaselinePipeline, CTFPipeline

        c = self.cfg
        stops = c.checkpoint_steps()
        curves: dict[str, list[dict]] = {"ctf": [], "baseline": []}
        for i, step in enumerate(stops):
            last = step == stops[-1]
            done = {n: (self.out / "evals" / f"{n}-step{step}.json").is_file() for n in curves}
            if not all(done.values()):
                runs = {kind: self.train(kind, codes, coarse, stop_after=step) for kind in ("ar", "aux", "baseline")}
                pipes = {"ctf": lambda: CTFPipeline.from_folders(tokenizer=tok, ar=runs["ar"], aux=runs["aux"],
                                                                 device=self.device),
                         "baseline": lambda: BaselinePipeline.from_folders(tokenizer=tok, baseline=runs["baseline"],
                                                                           device=self.device)}
            for name in curves:
                pipe = None if done[name] else pipes[name]()
                t0 = time.time()
                res = self.evaluate(f"{name}-step{step}", pipe, clf, samples_per_class=c.samples_per_class,
                                    inception=c.inception == "all" or (c.inception == "last" and last),
                                    metadata={"train_steps": step, "schedule_steps": c.steps, "preset": c.preset},
                                    grid=last)
                if not done[name]:
                    self.timings[f"sample+eval {name} step {step}"] = round(time.time() - t0, 1)
                curves[name].append(res)
            atomic_write_json(self.out / "timings.json", self.timings)
        return curves

    def run(self, ablations: list[str] = ()) -> Path:
        from .ablations import run_ablation
        from .report import write_quality_report

        t0 = self._begin()
        tok = self.tokenizer()
        codes = self.codes(tok)
        coarse = self.coarse_map(tok)
        clf = self.classifier()
        curves = self.compare(tok, codes, coarse, clf)
        tables = {name: run_ablation(self, name, tok=tok, codes=codes, clf=clf) for name in ablations}
        self._end(t0)
        page = write_quality_report(self.out, cfg=self.cfg, curves=curves, ablations=tables, timings=self.timings)
        self.log(f"[quality] done in {self.timings['this run (total)']:.0f} s: {page}")
        return page
