"""The metrics themselves, on feature arrays: Fréchet distance, Inception Score, precision/recall.

These are hand-written rather than taken from torchmetrics or torch-fidelity: both fetch their
Inception weights from the internet on first use (impossible on machines without it), and the
formulas are short. Each is tested against a value known in closed form (tests/test_eval.py).
"""
from __future__ import annotations

import numpy as np
import torch

try:  # scipy arrives with scikit-learn; the eigen route below needs only numpy
    import scipy.linalg as _scipy_linalg
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_linalg = None


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64 for a stable sqrtm."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N>=2, D) features for statistics, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # tr sqrt(S1 S2) = tr sqrt(S1^½ S2 S1^½), and the latter matrix is symmetric PSD, so its
    # eigenvalues are real and >= 0 up to rounding: no complex parts to discard.
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ sigma2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def _trace_sqrt_product_scipy(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    # The formulation of the reference FID code, kept so numbers compare with published ones.
    covmean = _scipy_linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Near-singular product (fewer samples than dimensions): nudge both diagonals.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _scipy_linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, method: str = "auto"
) -> float:
    """||mu1-mu2||² + tr(S1 + S2 - 2 sqrt(S1 S2)), the Fréchet distance of two Gaussians.

    method: "scipy" (scipy.linalg.sqrtm, as the reference FID code), "eigh" (symmetric eigen
    route, needs only numpy) or "auto" (scipy when installed).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if method == "auto":
        method = "scipy" if _scipy_linalg is not None else "eigh"
    if method == "scipy":
        if _scipy_linalg is None:
            raise ValueError("method='scipy' needs scipy installed; use method='eigh'")
        tr_covmean = _trace_sqrt_product_scipy(s1, s2)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    else:
        raise ValueError(f"unknown sqrtm method {method!r}; expected auto, scipy or eigh")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def inception_score(probs: np.ndarray, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` equal chunks (the usual protocol).

    The chunks are taken from a seeded random permutation of the rows: the split marginal p(y) must
    see every class, and class-balanced samples usually come class by class, so chunks in order
    would each hold one class and score about 1 however good the samples are.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < splits:
        raise ValueError(f"need (N>={splits}, classes) probabilities, got shape {p.shape}")
    p = p[np.random.default_rng(seed).permutation(len(p))]
    scores = []
    for chunk in np.array_split(p, splits):
        marginal = chunk.mean(axis=0, keepdims=True)
        # 0·log 0 = 0: only classes with mass contribute.
        kl = np.where(chunk > 0, chunk * (np.log(np.clip(chunk, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), 0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    radii = []
    for i in range(0, len(x), batch):
        d = torch.cdist(x[i : i + batch], x)
        # k+1 smallest: the point itself sits at distance 0 and is not its own neighbour.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, len(queries), batch):
        d = torch.cdist(queries[i : i + batch], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3, batch: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) by k-NN manifold estimates.

    Each set's manifold is the union of balls around its points, each reaching its k-th nearest
    neighbour in the same set. Precision: share of fake points inside the real manifold; recall:
    share of real points inside the fake manifold.
    """
    real = torch.as_tensor(np.asarray(real_features, np.float32))
    fake = torch.as_tensor(np.asarray(fake_features, np.float32))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need (N, D) features of one width, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points in each set")
    precision = _covered(fake, real, _kth_neighbour_radii(real, k, batch), batch).float().mean().item()
    recall = _covered(real, fake, _kth_neighbour_radii(fake, k, batch), batch).float().mean().item()
    return precision, recall
