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
from ..lazy import lazy_attributes
from .config import MIN_CLASSIFIER_ACCURACY, ClassifierConfig, ClassifierTrainConfig

# The metrics and networks need torch; loading them on first use lets the command line read the
# classifier's settings at once.
_LAZY = {"ClassifierArtifact": "classifier", "DomainClassifier": "classifier", "classifier_outputs": "classifier",
         "save_classifier": "classifier", "train_classifier": "classifier", "evaluate_images": "core",
         "library_versions": "core", "InceptionFeatures": "inception", "default_inception_path": "inception",
         "SampleSet": "inputs", "load_samples": "inputs", "frechet_distance": "metrics", "gaussian_stats": "metrics",
         "inception_score": "metrics", "precision_recall": "metrics", "Reference": "reference",
         "cache_dir": "reference", "reference_from_dataset": "reference", "reference_from_npz": "reference"}


def classifier_info(manifest: dict, folder: str | None = None) -> dict:
    """What a result records about the classifier: fingerprint, test accuracy, data, folder."""
    info = manifest.get("info", {})
    return {
        "fingerprint": manifest["fingerprint"],
        "folder": folder,
        "test_accuracy": info.get("test_accuracy"),
        "trained_on": manifest.get("made_from", {}).get("data"),
    }


__all__ = ["MIN_CLASSIFIER_ACCURACY", "ClassifierConfig", "ClassifierTrainConfig", "classifier_info", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
