"""`ctfgen demo`: the whole pipeline on the embedded Fashion-MNIST default, small enough for a laptop CPU.

tokenizer -> codes -> coarse labels -> stage 1 + stage 2 (CTF) and the baseline -> samples ->
evaluation -> a report folder (Markdown page, side-by-side grids, metrics table, loss curves).
Every step writes its own artifact folder under `out`; a rerun skips the finished ones (training
runs resume from their last checkpoint), so an interrupted demo picks up where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .artifacts import MANIFEST, atomic_write_bytes, atomic_write_json
from .config import to_dict
from .data import DataConfig, load_dataset
from .errors import CtfgenError


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


COARSE_FIGURE = "coarse-to-fine.png"
COARSE_FIGURE_COMMAND = ("ctfgen sample --pipeline {out}/pipeline-ctf --per-class 2 --seed {seed} --grid-scale 2 "
                         "--coarse-grid coarse-to-fine.png")
# the two totals of timings.json: every step (whenever it ran), and this invocation alone
TOTALS = ("all steps (total)", "this run (total)")


def _done(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return not (manifest.get("info") or {}).get("unfinished")  # a tokenizer training checkpoint resumes instead


class Demo:
    name = "demo"  # log prefix, and the settings file is f"{name}_config.json"

    def __init__(self, cfg: DemoConfig, out: str | Path, *, device="cpu", progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg, self.out, self.device, self.progress, self.log = cfg, Path(out), device, progress, log
        # seconds per step, kept across reruns so the report shows what each step cost when it ran
        self.timings: dict[str, float] = {}
        if (self.out / "timings.json").is_file():
            self.timings = json.loads((self.out / "timings.json").read_text())

    def step(self, name: str, folder: Path, fn: Callable[[], object]) -> Path:
        if _done(folder):
            self.log(f"[{self.name}] {name}: reusing {folder}")
            return folder
        self.log(f"[{self.name}] {name} -> {folder}")
        t0 = time.time()
        fn()
        self.timings[name] = round(time.time() - t0, 1)
        return folder

    # ------------------------------------------------------------------ stages
    def tokenizer(self) -> Path:
        from .tokenizer import vq_preset
        from .tokenizer.train import TokenizerTrainConfig, train_tokenizer

        c = self.cfg
        vq = vq_preset("fmnist", resolution=c.data.resolution, channels=c.data.channels)
        tc = TokenizerTrainConfig(vq=vq, data=c.data, steps=c.tokenizer_steps,
                                  batch_size=c.tokenizer_batch, seed=c.seed, eval_limit=2000)
        folder = self.out / "tokenizer"
        return self.step("tokenizer", folder, lambda: train_tokenizer(tc, folder, device=self.device, progress=self.progress))

    def codes(self, tok_dir: Path) -> Path:
        from .codes import encode_dataset
        from .tokenizer import load_tokenizer

        folder = self.out / "codes-train"

        def run():
            encode_dataset(load_tokenizer(tok_dir, self.device), load_dataset(self.cfg.data, "train"), folder,
                           views=self.cfg.views, limit=self.cfg.code_images, device=self.device, progress=self.progress)
        return self.step("codes", folder, run)

    def coarse_map(self, tok_dir: Path, *, method: str | None = None, k: int | None = None) -> Path:
        from .cluster import build_coarse_map, load_codebook

        method, k = method or self.cfg.cluster_method, k or self.cfg.k
        folder = self.out / f"coarse-{method}-k{k}"

        def run():
            codebook, fp = load_codebook(tok_dir)
            build_coarse_map(codebook, k, method=method, seed=self.cfg.seed, tokenizer_fingerprint=fp).save(folder)
        return self.step(f"coarse labels ({method}, K={k})", folder, run)

    def train(self, kind: str, codes_dir: Path, coarse_dir: Path | None, *, folder: Path | None = None,
              preset: str | None = None, steps: int | None = None, stop_after: int = 0,
              overrides: dict | None = None) -> Path:
        """Train (or resume, or reuse) one model; `stop_after` pauses it there (segments of one schedule)."""
        from .train import RunOptions, TrainConfig, train

        c = self.cfg
        key = f"train {kind}" if folder is None else f"train {folder.name}"
        folder = folder or self.out / {"ar": "stage1", "aux": "stage2", "baseline": "baseline"}[kind]
        steps = steps or c.steps
        tc = TrainConfig(kind=kind, preset=preset or c.preset, steps=steps, batch_size=c.batch_size, lr=c.lr,
                         warmup_steps=c.warmup, cosine=True, seed=c.seed, model_overrides=dict(overrides or {}))
        # without segments, intermediate checkpoints let an interrupted run resume; with them, only
        # the segment ends are saved, so the folder always holds the step it was asked for
        every = 0 if stop_after else max(steps // 4, 1)
        run = RunOptions(device=str(self.device), progress=self.progress, ckpt_every=every, stop_after=stop_after)
        # A finished run folder is reused by the trainer itself (it resumes, or does nothing if done).
        self.log(f"[{self.name}] train {kind} -> {folder}" + (f" (to step {stop_after})" if stop_after else ""))
        t0 = time.time()
        result = train(tc, codes_dir=codes_dir, out_dir=folder, coarse_map_dir=coarse_dir if kind != "baseline" else None, run=run)
        if stop_after and result.step != min(stop_after, result.total_steps):
            raise CtfgenError(f"{folder} is at step {result.step}, not {stop_after}: it was trained past this "
                              "checkpoint outside this command; delete it to start over")
        if result.step > result.resumed_from:  # a finished run that was only reloaded keeps its time
            # segments of one schedule add up; a whole run replaces the time of an earlier attempt
            earlier = self.timings.get(key, 0.0) if stop_after else 0.0
            self.timings[key] = round(earlier + time.time() - t0, 1)
        return folder

    def pipelines(self, tok_dir: Path, runs: dict[str, Path]) -> dict[str, Path]:
        from .sample import make_pipeline

        ctf, base = self.out / "pipeline-ctf", self.out / "pipeline-baseline"
        self.step("CTF pipeline", ctf, lambda: make_pipeline(ctf, tokenizer=tok_dir, ar=runs["ar"], aux=runs["aux"], copy=False))
        self.step("baseline pipeline", base, lambda: make_pipeline(base, tokenizer=tok_dir, baseline=runs["baseline"], copy=False))
        return {"ctf": ctf, "baseline": base}

    def classifier(self) -> Path:
        from .data import CLASSES_FILE, dataset_class_table
        from .data.classes import classes_json
        from .evaluate import ClassifierTrainConfig, save_classifier, train_classifier
        from .evaluate.classifier import ClassifierConfig, accuracy

        folder = self.out / "classifier"

        def run():
            train_ds, test_ds = load_dataset(self.cfg.data, "train"), load_dataset(self.cfg.data, "test")
            tc = ClassifierTrainConfig(epochs=self.cfg.classifier_epochs, seed=self.cfg.seed)
            cc = ClassifierConfig(resolution=self.cfg.data.resolution, channels=self.cfg.data.channels,
                                  num_classes=train_ds.num_classes)
            model = train_classifier(train_ds.uint8_images(), train_ds.labels, cfg=cc, train_cfg=tc, progress=self.progress)
            acc = accuracy(model, test_ds.uint8_images(), test_ds.labels)
            classes = classes_json(dataset_class_table(train_ds, test_ds))
            save_classifier(model, folder, train_cfg=tc, data=train_ds.describe(), info={"test_accuracy": acc},
                            extra_files={CLASSES_FILE: classes})
        return self.step("domain classifier", folder, run)

    def sample_and_evaluate(self, pipes: dict[str, Path], clf_dir: Path) -> dict[str, dict]:
        import numpy as np

        from .evaluate import (InceptionFeatures, cache_dir, classifier_info, default_inception_path,
                               evaluate_images, load_classifier, reference_from_dataset)
        from .evaluate.core import RESULT_FORMAT
        from .sample import load_pipeline
        from .sample.outputs import grid_image, png_bytes

        c = self.cfg
        clf, clf_manifest = load_classifier(clf_dir)
        reference = reference_from_dataset(c.data, "test", max_images=c.reference_images or None)
        inception = InceptionFeatures() if c.inception and default_inception_path() else None
        results = {}
        for name, folder in pipes.items():
            res_path = self.out / f"eval-{name}.json"
            if res_path.is_file():
                saved = json.loads(res_path.read_text())
                if saved.get("format") == RESULT_FORMAT:  # an older format is evaluated again
                    self.log(f"[demo] evaluate {name}: reusing {res_path}")
                    results[name] = saved
                    continue
            self.log(f"[demo] sample + evaluate {name}")
            t0 = time.time()
            pipe = load_pipeline(folder, device=self.device)
            labels = [k for k in range(pipe.num_classes) for _ in range(c.samples_per_class)]
            t_s = time.time()
            samples = pipe.generate(labels, seed=c.seed, batch_size=64, progress=self.progress)
            sample_seconds = time.time() - t_s
            per_class = min(10, c.samples_per_class)  # samples are class by class
            show = np.concatenate([np.arange(per_class) + k * c.samples_per_class for k in range(pipe.num_classes)])
            grid = grid_image(samples.images[show], samples.labels[show], scale=2)
            atomic_write_bytes(self.out / "report" / f"samples-{name}.png", png_bytes(grid))
            meta = {"pipeline": str(folder), "seed": c.seed, "sampling": to_dict(samples.settings),
                    "sample_seconds": round(sample_seconds, 1), "images_per_second": round(len(labels) / sample_seconds, 2)}
            result = evaluate_images(samples.images, samples.labels, reference=reference, classifier=clf,
                                     classifier_info=classifier_info(clf_manifest, str(clf_dir)), inception=inception,
                                     cache=cache_dir(), metadata=meta, progress=self.progress)
            for warning in result.get("warnings", []):
                self.log(f"[{self.name}] warning: {warning}")
            atomic_write_json(res_path, result)
            results[name] = result
            self.timings[f"sample+eval {name}"] = round(time.time() - t0, 1)
        return results

    def coarse_figure(self, ctf_dir: Path, *, per_class: int = 2) -> Path:
        """report/coarse-to-fine.png: coarse-label map, coarse image and final image of `per_class` CTF
        samples of every class; the same file as `ctfgen sample --pipeline CTF_DIR --per-class 2
        --seed SEED --grid-scale 2 --coarse-grid PNG` (COARSE_FIGURE_COMMAND)."""
        from .sample import load_pipeline
        from .sample.coarse_view import coarse_views
        from .sample.outputs import save_coarse_grid

        path = self.out / "report" / COARSE_FIGURE
        if path.is_file():
            self.log(f"[{self.name}] coarse-to-fine figure: reusing {path}")
            return path
        self.log(f"[{self.name}] coarse-to-fine figure -> {path}")
        t0 = time.time()
        pipe = load_pipeline(ctf_dir, device=self.device)
        labels = [k for k in range(pipe.num_classes) for _ in range(per_class)]
        samples = pipe.generate(labels, seed=self.cfg.seed, batch_size=64)
        save_coarse_grid(path, coarse_views(pipe, samples), samples.labels, scale=2)
        self.timings["coarse-to-fine figure"] = round(time.time() - t0, 1)
        return path

    def _begin(self) -> float:
        """Create the folder, refuse it if other settings made it, record ours; the start time."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_same_settings()
        atomic_write_json(self.out / f"{self.name}_config.json", to_dict(self.cfg))
        return time.time()

    def _end(self, t0: float) -> None:
        # A rerun that reuses steps is quick: the sum over steps says what the whole folder cost.
        for key in TOTALS:
            self.timings.pop(key, None)
        self.timings[TOTALS[0]] = round(sum(self.timings.values()), 1)
        self.timings[TOTALS[1]] = round(time.time() - t0, 1)
        atomic_write_json(self.out / "timings.json", self.timings)

    def _check_same_settings(self) -> None:
        """Reuse is only sound with the settings that made the folder: refuse a silent mix."""
        saved_path = self.out / f"{self.name}_config.json"
        if not saved_path.is_file():
            return
        from .config import changed_settings

        diff = changed_settings(self.cfg, json.loads(saved_path.read_text()))
        if diff:
            k, there, now = diff[0]
            raise CtfgenError(f"{self.out} was made with other {self.name} settings ({k}: {there!r} there, "
                              f"{now!r} now); use another --out, or delete the folder to start over")

    # ------------------------------------------------------------------ all
    def run(self) -> Path:
        t0 = self._begin()
        tok = self.tokenizer()
        codes = self.codes(tok)
        coarse = self.coarse_map(tok)
        runs = {kind: self.train(kind, codes, coarse) for kind in ("ar", "aux", "baseline")}
        pipes = self.pipelines(tok, runs)
        clf = self.classifier()
        results = self.sample_and_evaluate(pipes, clf)
        self.coarse_figure(pipes["ctf"])
        self._end(t0)
        from .report import write_demo_report

        page = write_demo_report(self.out, results=results, runs=runs, tokenizer=tok, timings=self.timings, cfg=self.cfg)
        self.log(f"[demo] done in {self.timings['this run (total)']:.0f} s: {page}")
        return page
