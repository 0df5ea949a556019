"""A workspace's sampled sets and their scores (experiments/workspace.py's `Workspace` has these steps):
class-balanced samples of a pipeline, their grid and npz, their evaluation against the domain
classifier and the reference cached as JSON, and the rescoring of results an older evaluation
format left stale."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ..artifacts import atomic_write_bytes, atomic_write_json
from ..config import to_dict

# metrics whose computation changed since evaluation format 1 (classifier-IS splits)
STALE_METRICS = ("is_classifier", "is_classifier_std")


class NotMade(Exception):
    """A step or measurement not made yet, met by a workspace told to make nothing (`make=False`)."""


class SampleScores:
    """The sampling and scoring steps of `experiment.Workspace`, which provides what they read: `cfg`
    (the recipe's data and reference_images), `out`, `seed`, `make`, `progress`, `log`, `log_reuse`,
    `timings` and `_tools` (None until `eval_tools` loads them)."""

    def eval_tools(self, clf_dir: Path) -> dict[str, Any]:
        """Classifier, reference (`reference_images` of the test split) and (lazily, see `inception`)
        the Inception network, loaded once for every evaluation of this workspace."""
        if self._tools is None:
            from ..evaluate import ClassifierArtifact, classifier_info, reference_from_dataset

            clf = ClassifierArtifact.load(clf_dir)
            ref = reference_from_dataset(self.cfg.data, "test", max_images=self.cfg.reference_images or None)
            self._tools = {"classifier": clf.module, "classifier_info": classifier_info(clf.manifest, str(clf_dir)),
                           "reference": ref, "inception": None}
        return self._tools

    def inception(self):
        from ..evaluate import InceptionFeatures

        if self._tools["inception"] is None:
            self._tools["inception"] = InceptionFeatures()
        return self._tools["inception"]

    def sample_and_score(self, tag: str, make_pipe: Callable[[], Any], clf_dir: Path, *, samples_per_class: int,
                         path: Path | None = None, seed: int | None = None, batch_size: int = 64,
                         settings: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                         inception: bool = False, grid: bool = False, keep_samples: bool = True,
                         timing: str | None = None) -> dict:
        """`samples_per_class` images of every class from the pipeline `make_pipe()` (built only when
        needed), sampled with `settings` (SamplingConfig fields) and sampling `seed` (default: the
        workspace's), evaluated against the reference; the result JSON is cached at `path` (default
        evals/<tag>.json) and returned. `grid`: report/samples-<tag>.png, 10 per class; `keep_samples`:
        samples/<tag>.npz (ADM format, re-scorable). `timing`: the timings key of the seconds taken.

        A cached result of an older evaluation format is rescored from its kept samples (or, without
        them, the metrics the format fixed are withdrawn); without `keep_samples` it is sampled again."""
        from ..evaluate import cache_dir, evaluate_images
        from ..evaluate.core import RESULT_FORMAT

        path = path or self.out / "evals" / f"{tag}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if result.get("format") == RESULT_FORMAT or not self.make:
                if self.log_reuse:
                    self.log(f"evaluate {tag}: reusing {path}")
                return result
            if keep_samples:
                return self.update_stale(tag, path, result, clf_dir)
        if not self.make:
            raise NotMade(tag)
        seed = self.seed if seed is None else seed
        tools = self.eval_tools(clf_dir)
        t0 = time.time()
        pipe = make_pipe()
        labels = [k for k in range(pipe.num_classes) for _ in range(samples_per_class)]
        self.log(f"sample + evaluate {tag}: {len(labels)} images")
        t_s = time.time()
        samples = pipe.generate(labels, seed=seed, batch_size=batch_size, progress=self.progress, **(settings or {}))
        sample_s = time.time() - t_s
        if grid:
            self._save_grid(tag, samples, samples_per_class, pipe.num_classes)
        if keep_samples:
            from ..sample.outputs import save_npz

            save_npz(self.out / "samples" / f"{tag}.npz", samples, tokenizer=pipe.fingerprints.get("tokenizer"))
        meta = {"pipeline": pipe.type, "models": pipe.fingerprints, "folders": {k: str(v) for k, v in pipe.folders.items()},
                "seed": seed, "samples_per_class": samples_per_class, "sampling": to_dict(samples.settings),
                "sample_seconds": round(sample_s, 1), "images_per_second": round(len(labels) / sample_s, 2),
                **(metadata or {})}
        result = evaluate_images(samples.images, samples.labels, reference=tools["reference"],
                                 classifier=tools["classifier"], classifier_info=tools["classifier_info"],
                                 inception=self.inception() if inception else None, cache=cache_dir(),
                                 metadata=meta, progress=self.progress)
        for warning in result.get("warnings", []):
            self.log(f"warning: {warning}")
        atomic_write_json(path, result)
        if timing:
            self.timings[timing] = round(time.time() - t0, 1)
        return result

    def _save_grid(self, tag: str, samples, samples_per_class: int, num_classes: int) -> None:
        import numpy as np

        from ..sample.outputs import grid_image, png_bytes

        per_class = min(10, samples_per_class)  # samples are class by class
        show = np.concatenate([np.arange(per_class) + k * samples_per_class for k in range(num_classes)])
        atomic_write_bytes(self.out / "report" / f"samples-{tag}.png",
                           png_bytes(grid_image(samples.images[show], samples.labels[show], scale=2)))

    def update_stale(self, tag: str, path: Path, result: dict, clf_dir: Path) -> dict:
        """A result of an older evaluation format: its classifier metrics are recomputed from the
        saved samples when they exist (Inception FID, unaffected, is kept); otherwise the metrics
        the format change fixed are withdrawn, their old values kept under `withdrawn`."""
        from ..evaluate import evaluate_images
        from ..evaluate.core import RESULT_FORMAT
        from ..evaluate.inputs import load_samples

        old = {k: result["metrics"].pop(k) for k in STALE_METRICS if k in result["metrics"]}
        npz = self.out / "samples" / f"{tag}.npz"
        if npz.is_file():
            tools = self.eval_tools(clf_dir)
            s = load_samples(npz)
            images = s.images[..., :1] if self.cfg.data.channels == 1 else s.images  # npz holds RGB
            new = evaluate_images(images, s.labels, reference=tools["reference"], classifier=tools["classifier"],
                                  classifier_info=tools["classifier_info"], progress=self.progress)
            result["metrics"].update(new["metrics"])
            result["rescored"] = {"from": str(npz), "format_was": result.get("format"), "old_values": old}
            self.log(f"{path.name}: classifier metrics recomputed from {npz.name} (format {RESULT_FORMAT})")
        else:
            result["withdrawn"] = {"format_was": result.get("format"), "old_values": old,
                                   "why": "classifier-IS of evaluation format 1 split the samples in order; "
                                          "these samples were not kept, so it cannot be recomputed"}
            self.log(f"{path.name}: classifier-IS withdrawn (older format, samples not kept)")
        result["format"] = RESULT_FORMAT
        atomic_write_json(path, result)
        return result
