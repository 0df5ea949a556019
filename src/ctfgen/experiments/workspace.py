"""The steps every experiment (`ctfgen demo`, `bench quality`, `bench scaling`, `bench lasting`) is
made of, cached in one folder: tokenizer -> codes -> coarse labels -> trained models -> pipelines,
the domain classifier, and (experiments/sample_scores.py) `sample_and_score`: class-balanced samples, their
grid and npz, the evaluation JSON.

An experiment holds a `Workspace` and calls its steps; each step writes its own artifact folder (or
JSON file) and is reused when that folder is finished, so an interrupted experiment picks up where
it stopped and a rerun of a finished one makes nothing. Logs carry the experiment's name.

The settings `cfg` are the experiment's own dataclass, a `Recipe` (experiments/recipe.py): the steps read its
fields (the data, the tokenizer's steps and batch, the codes' images, the models' preset, steps,
batch, rate and warm-up, the classifier's epochs, the reference images) and record all of it; what
varies within an experiment (the seed, the model size, the views, the clustering) is given to the
workspace or its steps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ..artifacts import MANIFEST, atomic_write_json, read_manifest
from ..config import to_dict
from ..errors import CtfgenError
from .recipe import Recipe
from .sample_scores import NotMade, SampleScores

# the two totals of timings.json: every step (whenever it ran), and this invocation alone
TOTALS = ("all steps (total)", "this run (total)")


def finished(folder: Path) -> bool:
    """True when `folder` holds a finished artifact (a tokenizer training checkpoint resumes instead)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return not (manifest.get("info") or {}).get("unfinished")


class Workspace(SampleScores):
    """One experiment's folder `out`, its settings (a `Recipe`, recorded as `<name>_config.json`), the
    seed of its steps and the model size of its trainings (else given to each), device, log prefix
    `name` and step timings.

    `make=False` makes nothing: a step or evaluation not done yet raises `NotMade` (gathering what a
    study has measured). `log_reuse=False` keeps quiet about reused steps (a study reuses hundreds)."""

    def __init__(self, cfg: Recipe, out: str | Path, *, name: str, seed: int, preset: str | None = None, device="cpu",
                 progress: bool = True, log: Callable[[str], None] = print, log_reuse: bool = True):
        self.cfg, self.out, self.name, self.device, self.progress = cfg, Path(out), name, device, progress
        # of every step not given its own
        self.seed, self.preset = seed, preset
        self._log, self.log_reuse, self.make = log, log_reuse, True
        # seconds per step, kept across reruns so a report shows what each step cost when it ran
        self.timings: dict[str, float] = {}
        if (self.out / "timings.json").is_file():
            self.timings = json.loads((self.out / "timings.json").read_text())
        self._tools: dict[str, Any] | None = None  # the evaluation's networks and reference, loaded once

    def log(self, message: str) -> None:
        self._log(f"[{self.name}] {message}")

    def step(self, label: str, folder: Path, make: Callable[[], object]) -> Path:
        """`folder`, made by `make()` unless it is finished already; its time recorded as `label`."""
        if finished(folder):
            if self.log_reuse:
                self.log(f"{label}: reusing {folder}")
            return folder
        if not self.make:
            raise NotMade(label)
        self.log(f"{label} -> {folder}")
        t0 = time.time()
        make()
        self.timings[label] = round(time.time() - t0, 1)
        return folder

    def _where(self, root: Path | None) -> tuple[Path, str]:
        """A step's parent folder and the suffix naming it in logs ("" for `out` itself)."""
        root = root or self.out
        return root, "" if root == self.out else f" {root.relative_to(self.out)}"

    def _given(self, what: str, kind: str, existing: str) -> Path:
        path = Path(existing)
        read_manifest(path, kind)  # a clear error if it is not such a folder
        self.log(f"{what}: using {path}")
        return path

    # ------------------------------------------------------------------ settings and timings

    def begin(self, *, extendable: set[str] = frozenset()) -> float:
        """Create the folder, refuse it if other settings made it (`extendable` fields may differ),
        record ours as `<name>_config.json`; the start time."""
        from ..config import changed_settings

        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / f"{self.name}_config.json"
        if saved.is_file():  # reuse is only sound with the settings that made the folder
            diff = [d for d in changed_settings(self.cfg, json.loads(saved.read_text()), ignore=extendable)
                    if not self._same_classifier(*d)]
            if diff:
                k, there, now = diff[0]
                raise CtfgenError(f"{self.out} was made with other {self.name} settings ({k}: {there!r} there, "
                                  f"{now!r} now); use another --out, or delete the folder to start over")
        atomic_write_json(saved, to_dict(self.cfg))
        return time.time()

    def _same_classifier(self, field: str, there, now) -> bool:
        """`--classifier OUT/classifier` names the classifier this folder trained for itself ('' in its
        settings): the same one, so processes sharing the folder may be given it (and runs without it
        follow runs with it)."""
        def folder(v):
            return (Path(v) if v else self.out / "classifier").resolve()

        return field == "classifier" and isinstance(there, str) and isinstance(now, str) and folder(there) == folder(now)

    def end(self, t0: float) -> None:
        """timings.json with its two totals (a rerun that reuses steps is quick: the sum over steps
        says what the whole folder cost)."""
        for key in TOTALS:
            self.timings.pop(key, None)
        self.timings[TOTALS[0]] = round(sum(self.timings.values()), 1)
        self.timings[TOTALS[1]] = round(time.time() - t0, 1)
        self.save_timings()

    def save_timings(self) -> None:
        atomic_write_json(self.out / "timings.json", self.timings)

    # ------------------------------------------------------------------ artifacts

    def tokenizer(self, *, root: Path | None = None, codebook_size: int | None = None, existing: str = "",
                  seed: int | None = None, vq: dict | None = None) -> Path:
        """root/tokenizer, trained with the "fmnist" recipe (`vq`: VQConfig fields over it) and `seed`
        (initial weights and batch order; default: the workspace's), or the folder `existing`, checked."""
        if existing:
            return self._given("tokenizer", "tokenizer", existing)
        from ..tokenizer import vq_preset
        from ..tokenizer.train import TokenizerTrainConfig, train_tokenizer

        c = self.cfg
        root, where = self._where(root)
        size = {"codebook_size": codebook_size} if codebook_size else {}
        vq = vq_preset("fmnist", resolution=c.data.resolution, channels=c.data.channels, **size, **(vq or {}))
        tc = TokenizerTrainConfig(vq=vq, data=c.data, steps=c.tokenizer_steps, batch_size=c.tokenizer_batch,
                                  seed=self.seed if seed is None else seed, eval_limit=2000)
        folder = root / "tokenizer"
        return self.step(f"tokenizer{where}", folder,
                         lambda: train_tokenizer(tc, folder, device=self.device, progress=self.progress))

    def codes(self, tok: Path, *, root: Path | None = None, split: str = "train", views: str = "none",
              limit: int | None = None, images: tuple[int, int] | None = None, name: str = "") -> Path:
        """root/codes-<name or split>: the split encoded by `tok` with `views` (training split: the first
        `code_images`), or its images images[0]..images[1]-1 alone (a held-out range)."""
        from ..codes import encode_dataset
        from ..data import load_dataset
        from ..tokenizer.artifact import TokenizerArtifact

        root, where = self._where(root)
        name = name or split
        folder = root / f"codes-{name}"
        limit = (self.cfg.code_images if split == "train" and not images else 0) if limit is None else limit
        label = "codes" + ("" if name == "train" else f" {name}") + where

        def data():
            ds = load_dataset(self.cfg.data, split)
            return ds.images_range(*images) if images else ds
        return self.step(label, folder, lambda: encode_dataset(
            TokenizerArtifact.load(tok, self.device), data(), folder, views=views, limit=limit, device=self.device,
            progress=self.progress))

    def coarse_map(self, tok: Path, *, method: str, k: int, root: Path | None = None, seed: int | None = None) -> Path:
        """root/coarse-<method>-k<K>: the codebook of `tok` clustered into K coarse labels by `method`
        (`seed`: the clustering's initialisation, default the workspace's)."""
        from ..cluster import build_coarse_map, load_codebook

        root, where = self._where(root)
        folder = root / f"coarse-{method}-k{k}"

        def run():
            codebook, fp = load_codebook(tok)
            build_coarse_map(codebook, k, method=method, seed=self.seed if seed is None else seed,
                             tokenizer_fingerprint=fp).save(folder)
        return self.step(f"coarse labels ({method}, K={k}){where}", folder, run)

    def train(self, kind: str, codes_dir: Path, coarse_dir: Path | None, *, folder: Path | None = None,
              preset: str | None = None, steps: int | None = None, seed: int | None = None, stop_after: int = 0,
              overrides: dict | None = None, recipe: dict | None = None, precision: str = "auto") -> Path:
        """Train (or resume, or reuse) one model of `kind` (ar, aux, baseline): out/stage1, out/stage2,
        out/baseline unless `folder` is given; `stop_after` pauses it there (segments of one schedule).
        `recipe`: TrainConfig fields over the experiment's (batch size, schedule); `precision`: RunOptions'.
        Raises CtfgenError if the folder was trained past `stop_after` elsewhere."""
        from ..train import RunOptions, TrainConfig, train

        if not self.make:
            raise NotMade(f"train {kind}")
        c = self.cfg
        key = f"train {kind}" if folder is None else f"train {folder.name}"
        folder = folder or self.out / {"ar": "stage1", "aux": "stage2", "baseline": "baseline"}[kind]
        steps, preset = steps or c.steps, preset or self.preset
        if not preset:
            raise CtfgenError(f"train {kind}: no model preset (give one to the workspace or to the step)")
        fields = dict(kind=kind, preset=preset, steps=steps, batch_size=c.batch_size, lr=c.lr,
                      warmup_steps=c.warmup, cosine=True, seed=self.seed if seed is None else seed,
                      model_overrides=dict(overrides or {}))
        tc = TrainConfig(**{**fields, **(recipe or {})})
        # without segments, intermediate checkpoints let an interrupted run resume; with them, only
        # the segment ends are saved, so the folder always holds the step it was asked for
        every = 0 if stop_after else max(steps // 4, 1)
        run = RunOptions(device=str(self.device), progress=self.progress, ckpt_every=every, stop_after=stop_after,
                         precision=precision)
        # A finished run folder is reused by the trainer itself (it resumes, or does nothing if done).
        self.log(f"train {kind} -> {folder}" + (f" (to step {stop_after})" if stop_after else ""))
        t0 = time.time()
        from ..models.config import KINDS

        result = train(tc, codes_dir=codes_dir, out_dir=folder, run=run,
                       coarse_map_dir=coarse_dir if KINDS[kind].needs_coarse_map else None)
        if stop_after and result.step != min(stop_after, result.total_steps):
            raise CtfgenError(f"{folder} is at step {result.step}, not {stop_after}: it was trained past this "
                              "checkpoint outside this command; delete it to start over")
        if result.step > result.resumed_from:  # a finished run that was only reloaded keeps its time
            # segments of one schedule add up; a whole run replaces the time of an earlier attempt
            earlier = self.timings.get(key, 0.0) if stop_after else 0.0
            self.timings[key] = round(earlier + time.time() - t0, 1)
        return folder

    def pipelines(self, tok: Path, runs: dict[str, Path]) -> dict[str, Path]:
        """out/pipeline-ctf and out/pipeline-baseline, linking the folders of `runs` (ar, aux, baseline)."""
        from ..sample import make_pipeline

        ctf, base = self.out / "pipeline-ctf", self.out / "pipeline-baseline"
        self.step("CTF pipeline", ctf, lambda: make_pipeline(ctf, tokenizer=tok, ar=runs["ar"], aux=runs["aux"], copy=False))
        self.step("baseline pipeline", base, lambda: make_pipeline(base, tokenizer=tok, baseline=runs["baseline"], copy=False))
        return {"ctf": ctf, "baseline": base}

    def classifier(self, *, existing: str = "") -> Path:
        """out/classifier: the domain classifier of classifier-FID/IS (or the folder `existing`, checked)."""
        if existing:
            return self._given("domain classifier", "classifier", existing)
        from ..data import CLASSES_FILE, dataset_class_table, load_dataset
        from ..data.classes import classes_json
        from ..evaluate import ClassifierTrainConfig, save_classifier, train_classifier
        from ..evaluate.classifier import ClassifierConfig, accuracy

        folder = self.out / "classifier"
        c = self.cfg

        def run():
            train_ds, test_ds = load_dataset(c.data, "train"), load_dataset(c.data, "test")
            tc = ClassifierTrainConfig(epochs=c.classifier_epochs, seed=self.seed)
            cc = ClassifierConfig(resolution=c.data.resolution, channels=c.data.channels, num_classes=train_ds.num_classes)
            model = train_classifier(train_ds.uint8_images(), train_ds.labels, cfg=cc, train_cfg=tc, progress=self.progress)
            acc = accuracy(model, test_ds.uint8_images(), test_ds.labels)
            classes = classes_json(dataset_class_table(train_ds, test_ds))
            save_classifier(model, folder, train_cfg=tc, data=train_ds.describe(), info={"test_accuracy": acc},
                            extra_files={CLASSES_FILE: classes})
        return self.step("domain classifier", folder, run)
