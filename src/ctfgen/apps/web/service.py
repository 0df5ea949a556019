"""What `ctfgen serve`'s page does, apart from the web framework: read a request as typed on the page,
refuse bad input with a message naming the field, generate with CTF (and the baseline, for the same
seeds), and return the images, the coarse-to-fine triplets and the time each pipeline took.

Generation holds a lock: the models keep one KV cache each, so requests run one at a time even if
the framework calls from several threads (the page's queue already serialises them).
"""
from __future__ import annotations

import math
from pathlib import Path
import threading
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...config import field_problem
from ...errors import CtfgenError
from ...sample.settings import SamplingConfig

if TYPE_CHECKING:
    from ...sample.pipeline import Pipeline


@dataclass
class PageRequest:
    """The page's fields as they arrive (numbers may be floats or None from empty boxes, the class an
    id, "id: name", or a name)."""

    class_id: Any = 0
    count: Any = 4
    seed: Any = 0
    guidance_scale: Any = 2.0
    temperature: Any = 1.1
    top_k: Any = 0
    top_p: Any = 1.0
    stage2_temperature: Any = 1.1


# the sampling settings the page offers (apps/web/app.py lays out an input for each)
PAGE_SETTINGS = [f for f in fields(SamplingConfig)
                 if f.name in ("guidance_scale", "temperature", "top_k", "top_p", "stage2_temperature")]


@dataclass
class PageResult:
    label: int
    class_name: str
    seeds: list[int]  # per-image seeds, shared by CTF and the baseline
    ctf_images: np.ndarray  # uint8 (N, H, W, 3)
    triplets: np.ndarray  # uint8 (N, H, 3W + 2, 3): coarse-label map | coarse image | final image
    ctf_seconds: float  # CTF generation (stage 1 + stage 2 + decoding), wall clock
    baseline_images: np.ndarray | None = None  # uint8 (N, H, W, 3)
    baseline_seconds: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def class_names_for(pipe: Pipeline, names: Sequence[str] | None = None) -> list[str]:
    """Names of the pipeline's classes: `names` when given (one per class); else those of the
    tokenizer folder's classes.json (written by `tokenizer train` from the data's class folders or
    names) when it has as many classes; else Fashion-MNIST's when the tokenizer's manifest records that
    source (tokenizers made before classes.json); else the ids."""
    from ...data import CLASSES_FILE, FASHION_MNIST_CLASSES
    from ...data.classes import read_class_names

    n = pipe.num_classes
    if names is not None:
        names = [s.strip() for s in names]
        if len(names) != n:
            raise CtfgenError(f"--class-names: {len(names)} names given, but the pipeline has {n} classes")
        return names
    if "tokenizer" in pipe.folders:
        table = Path(pipe.folders["tokenizer"]) / CLASSES_FILE
        if table.is_file():
            found = read_class_names(table)
            if len(found) == n:
                return found
    made = pipe.artifacts["tokenizer"].made_from if "tokenizer" in pipe.artifacts else {}
    source = (made.get("data_description") or {}).get("source")
    if source == "fashion-mnist" and n == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(c) for c in range(n)]


def _number(name: str, value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CtfgenError(f"{name}: enter a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CtfgenError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise CtfgenError(f"{name}: must be a finite number, got {value!r}")
    return x


def _whole(name: str, value: Any) -> int:
    x = _number(name, value)
    if x != int(x):
        raise CtfgenError(f"{name}: must be a whole number, got {value!r}")
    return int(x)


class PageService:
    """CTF (and optionally the baseline) behind the page. `max_images` caps one request's count."""

    def __init__(self, ctf: Pipeline, baseline: Pipeline | None = None, *, class_names: Sequence[str] | None = None,
                 max_images: int = 8, batch_size: int = 64):
        from ...sample.pipeline import BaselinePipeline, CTFPipeline

        if not isinstance(ctf, CTFPipeline):
            raise CtfgenError(f"--pipeline must be a CTF pipeline (stage 1 + stage 2), got a {ctf.type!r} pipeline")
        if baseline is not None:
            if not isinstance(baseline, BaselinePipeline):
                raise CtfgenError(f"--baseline-pipeline must be a baseline pipeline, got a {baseline.type!r} one")
            if baseline.num_classes != ctf.num_classes:
                raise CtfgenError(f"the baseline has {baseline.num_classes} classes, CTF {ctf.num_classes}: "
                                  "they must be trained on the same data")
        if max_images < 1:
            raise CtfgenError(f"--max-images must be >= 1, got {max_images}")
        self.ctf, self.baseline = ctf, baseline
        self.class_names = class_names_for(ctf, class_names)
        self.max_images, self.batch_size = max_images, batch_size
        self._lock = threading.Lock()

    @property
    def resolution(self) -> int:
        """Image side in pixels (the tokenizer's)."""
        return int(self.ctf.tokenizer.config.resolution)

    # ---- the page's choices

    def class_choices(self) -> list[tuple[str, str]]:
        """(shown, value) for a drop-down: "3: Dress" -> "3"."""
        return [(self.label_of(c), str(c)) for c in range(len(self.class_names))]

    def label_of(self, c: int) -> str:
        name = self.class_names[c]
        return str(c) if name == str(c) else f"{c}: {name}"

    def defaults(self) -> PageRequest:
        s = self.ctf.sampling
        return PageRequest(class_id="0", count=min(4, self.max_images), seed=0, guidance_scale=s.guidance_scale,
                           temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                           stage2_temperature=s.stage2_temperature)

    # ---- checking

    def parse_class(self, value: Any) -> int:
        n = len(self.class_names)
        text = str(value).strip() if value is not None else ""
        if not text:
            raise CtfgenError("class: pick a class")
        head = text.split(":", 1)[0].strip()
        try:
            c = int(float(head))
        except ValueError:
            lowered = [s.lower() for s in self.class_names]
            if text.lower() in lowered:
                return lowered.index(text.lower())
            raise CtfgenError(f"class: {text!r} is neither a class id (0..{n - 1}) nor a class name") from None
        if not 0 <= c < n:
            raise CtfgenError(f"class: {c} is not a class of this model; pick one of 0..{n - 1}")
        return c

    def check(self, req: PageRequest) -> tuple[int, int, int, dict[str, Any]]:
        """(class, count, seed, sampling settings), or CtfgenError naming the first bad field."""
        label = self.parse_class(req.class_id)
        count = _whole("number of images", req.count)
        if count < 1:
            raise CtfgenError(f"number of images: must be at least 1, got {count}")
        if count > self.max_images:
            raise CtfgenError(f"number of images: {count} is more than this server allows "
                              f"(at most {self.max_images}, set by `ctfgen serve --max-images`)")
        seed = _whole("seed", req.seed)
        if seed < 0:
            raise CtfgenError(f"seed: must be >= 0, got {seed}")
        settings = {}
        for f in PAGE_SETTINGS:  # named as the page names them, checked by the rules of SamplingConfig
            shown = f.metadata.get("label", f.name)
            value = (_whole if isinstance(f.default, int) else _number)(shown, getattr(req, f.name))
            problem = field_problem(f, value)
            if problem:
                raise CtfgenError(f"{shown}: {problem}")
            settings[f.name] = value
        self.ctf.settings(**settings)  # anything SamplingConfig refuses beyond the checks above
        return label, count, seed, settings

    # ---- generating

    def generate(self, req: PageRequest) -> PageResult:
        from ...sample.coarse_view import coarse_views
        from ...sample.outputs import triplet_images

        label, count, seed, settings = self.check(req)
        labels = [label] * count
        with self._lock:
            t0 = time.perf_counter()
            samples = self.ctf.generate(labels, seed=seed, batch_size=self.batch_size, **settings)
            ctf_seconds = time.perf_counter() - t0
            views = coarse_views(self.ctf, samples, batch_size=self.batch_size)
            result = PageResult(label=label, class_name=self.class_names[label], seeds=list(samples.seeds),
                                ctf_images=views.final_images, triplets=triplet_images(views),
                                ctf_seconds=ctf_seconds, settings=settings)
            if self.baseline is not None:
                t0 = time.perf_counter()  # the baseline reads the stage-1 settings only
                base = self.baseline.generate(labels, seed=seed, batch_size=self.batch_size, **settings)
                result.baseline_seconds = time.perf_counter() - t0
                result.baseline_images = np.repeat(base.images, 3, -1) if base.images.shape[-1] == 1 else base.images
        return result
