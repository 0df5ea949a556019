"""The sanity table of docs/EVALUATION.md: metrics must order real < mildly < strongly distorted.

    python -m ctfgen.evaluate.sanity --classifier runs/classifier [--n 5000] [--inception-n 0]

Reference: a fixed subset of the training split. Rows: the test split, other training images
blurred (Gaussian, sigma 1 and 2 px) or with added Gaussian noise (std 32 and 96 of 255), and
uniform noise. Inception columns use their own (smaller, `--inception-n`) sets because each
image costs ~0.1-0.3 s of CPU at 299x299.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataConfig, load_dataset
from . import ClassifierArtifact, InceptionFeatures, Reference, classifier_info, evaluate_images


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(torch.float32)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    c = x.shape[1]
    # Zero padding is the background of these images; reflect would smear borders inward.
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def add_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, std, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def sanity_sets(train: np.ndarray, test: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(reference, {row name: images}); the distorted rows use training images not in the reference."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    ref, other = train[order[:n]], train[order[n : 2 * n]]
    rows = {
        "test split": test[rng.permutation(len(test))[:n]],
        "train, blur sigma=1": gaussian_blur(other, 1.0),
        "train, blur sigma=2": gaussian_blur(other, 2.0),
        "train, noise std=32": add_noise(other, 32),
        "train, noise std=96": add_noise(other, 96),
        "uniform noise": rng.integers(0, 256, other.shape, dtype=np.uint8),
    }
    return ref, rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", required=True)
    p.add_argument("--n", type=int, default=5000, help="images per row and in the reference (classifier metrics)")
    p.add_argument("--inception-n", type=int, default=0, help="images per row for Inception FID (0: skip)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_ds, test_ds = load_dataset(DataConfig(), "train"), load_dataset(DataConfig(), "test")
    train, test = train_ds.uint8_images(), test_ds.uint8_images()
    loaded = ClassifierArtifact.load(args.classifier)
    clf, info = loaded.module, classifier_info(loaded.manifest, args.classifier)
    ref, rows = sanity_sets(train, test, args.n)
    reference = Reference(ref, None, f"sanity-train-{args.n}", {"split": "train", "used": args.n})
    table = {}
    for name, imgs in rows.items():
        m = evaluate_images(imgs, reference=reference, classifier=clf, classifier_info=info, progress=False)["metrics"]
        table[name] = {k: m[k] for k in ("fid_classifier", "is_classifier", "precision", "recall")}
    if args.inception_n:
        net = InceptionFeatures()
        ref_i, rows_i = sanity_sets(train, test, args.inception_n)
        ref_i = Reference(ref_i, None, f"sanity-train-{args.inception_n}", {})
        for name, imgs in rows_i.items():
            t0 = time.perf_counter()
            table[name]["fid_inception"] = evaluate_images(imgs, reference=ref_i, inception=net, progress=True)["metrics"]["fid_inception"]
            print(f"{name}: inception {time.perf_counter() - t0:.0f}s", flush=True)
    cols = ["fid_inception"] * bool(args.inception_n) + ["fid_classifier", "is_classifier", "precision", "recall"]
    print(f"| samples (n={args.n}{f', Inception n={args.inception_n}' if args.inception_n else ''}) | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, m in table.items():
        print(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
