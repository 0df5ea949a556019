"""Evaluation: FID (standard Inception), classifier-FID / -IS, precision/recall, recorded as JSON.

    from ctfgen.evaluate import ClassifierArtifact, evaluate_images, InceptionFeatures, reference_from_dataset
    ref = reference_from_dataset(DataConfig(), "test")
    clf = ClassifierArtifact.load("runs/classifier")
    result = evaluate_images(images_uint8, labels, reference=ref, classifier=clf.module,
                             classifier_info=classifier_info(clf.manifest), inception=InceptionFeatures(),
                             cache=cache_dir(), metadata={"seed": 0})

The core API takes uint8 (N, H, W, C) arrays, so it needs no dataset or model objects; see
docs/EVALUATION.md for the protocol and the sanity table.
"""
from .classifier import (
    ClassifierArtifact,
    ClassifierConfig,
    ClassifierTrainConfig,
    DomainClassifier,
    classifier_outputs,
    save_classifier,
    train_classifier,
)
from .core import evaluate_images, library_versions
from .inception import InceptionFeatures, default_inception_path
from .inputs import SampleSet, load_samples
from .metrics import frechet_distance, gaussian_stats, inception_score, precision_recall
from .reference import Reference, cache_dir, reference_from_dataset, reference_from_npz


def classifier_info(manifest: dict, folder: str | None = None) -> dict:
    """What a result records about the classifier: fingerprint, test accuracy, data, folder."""
    info = manifest.get("info", {})
    return {
        "fingerprint": manifest["fingerprint"],
        "folder": folder,
        "test_accuracy": info.get("test_accuracy"),
        "trained_on": manifest.get("made_from", {}).get("data"),
    }


__all__ = [
    "ClassifierArtifact", "ClassifierConfig", "ClassifierTrainConfig", "DomainClassifier", "InceptionFeatures", "Reference",
    "SampleSet", "cache_dir", "classifier_info", "classifier_outputs", "default_inception_path",
    "evaluate_images", "frechet_distance", "gaussian_stats", "inception_score", "library_versions",
    "load_samples", "precision_recall", "reference_from_dataset", "reference_from_npz",
    "save_classifier", "train_classifier",
]  # fmt: skip
