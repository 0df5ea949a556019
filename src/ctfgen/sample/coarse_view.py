"""Coarse to fine, made visible: what stage 1 decided and what stage 2 added, for each CTF sample.

For every sample three images of the same size:
- the coarse-label map: each token position coloured by its coarse label (cluster);
- the coarse image: each position decoded from one representative code of its cluster, the member
  nearest the cluster's centroid in the tokenizer's (L2-normalised) codebook, so it shows what the
  coarse labels alone say about the image;
- the final image: the codes stage 2 picked inside those clusters, decoded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CtfgenError
from .pipeline import CTFPipeline, Samples
from .pipeline_folder import STAGE2_ROLE


@dataclass
class CoarseViews:
    """The three stages of N samples, in sample order; all images uint8 (N, H, W, 3)."""

    coarse_NL: np.ndarray  # stage 1's coarse label of every token position
    label_maps: np.ndarray  # coarse labels coloured (one colour per cluster), upscaled to the image size
    coarse_images: np.ndarray  # decoded from each cluster's representative code
    final_images: np.ndarray  # the samples themselves (grey replicated to RGB)


def cluster_representatives(codebook_VD: torch.Tensor, code_to_coarse_V: torch.Tensor, k: int) -> torch.Tensor:
    """(K,) the code of each cluster nearest its centroid (mean of its members' codewords).

    Ties go to the smallest code index. Raises CtfgenError when a cluster has no member.
    """
    codebook_VD = codebook_VD.detach().float().cpu()
    c2c_V = code_to_coarse_V.detach().long().cpu()
    counts_K = torch.bincount(c2c_V, minlength=k)
    if bool((counts_K == 0).any()):
        raise CtfgenError(f"coarse map: cluster {int(torch.nonzero(counts_K == 0)[0])} has no code")
    sums_KD = torch.zeros(k, codebook_VD.shape[1]).index_add_(0, c2c_V, codebook_VD)
    centroid_KD = sums_KD / counts_K[:, None]
    dist_V = (codebook_VD - centroid_KD[c2c_V]).square().sum(-1)
    best_K = torch.full((k,), float("inf")).scatter_reduce(0, c2c_V, dist_V, reduce="amin")
    is_best_V = dist_V <= best_K[c2c_V]
    # the smallest index among each cluster's nearest members: scatter the indices with amin
    big = len(c2c_V)
    cand_V = torch.where(is_best_V, torch.arange(big), torch.full((big,), big))
    return torch.full((k,), big).scatter_reduce(0, c2c_V, cand_V, reduce="amin")


def cluster_colors(k: int) -> np.ndarray:
    """(K, 3) uint8 colours, neighbouring labels far apart in hue (golden-ratio steps), two
    brightness levels so that K in the hundreds stays distinguishable."""
    from matplotlib.colors import hsv_to_rgb

    i = np.arange(k)
    hsv = np.stack([(i * 0.6180339887) % 1.0, np.where(i % 2, 0.55, 0.85), np.where(i % 3 == 2, 0.7, 0.95)], -1)
    return (hsv_to_rgb(hsv) * 255).round().astype(np.uint8)


def stage1_labels(pipe: CTFPipeline, samples: Samples) -> np.ndarray:
    """(N, L) the coarse labels stage 1 drew for `samples`: `samples.coarse`, which `pipe.generate`
    fills. Samples without them (built by hand) give the clusters of their codes when the pipeline's
    stage 2 draws only cluster members (`members_only`, the default); otherwise CtfgenError."""
    if samples.coarse is not None:
        return np.asarray(samples.coarse)
    stage2 = pipe.models[STAGE2_ROLE]
    if not stage2.members_only:
        raise CtfgenError("these samples carry no coarse labels (Samples.coarse) and this stage 2 may draw codes "
                          "outside their clusters: make them with the pipeline's generate()")
    return stage2.code_to_coarse.cpu()[torch.as_tensor(samples.codes, dtype=torch.long)].numpy()


def _rgb(images_NHWC: np.ndarray) -> np.ndarray:
    return np.repeat(images_NHWC, 3, axis=-1) if images_NHWC.shape[-1] == 1 else images_NHWC


def coarse_views(pipe: CTFPipeline, samples: Samples, *, batch_size: int = 64) -> CoarseViews:
    """Label map, coarse image and final image of every sample in `samples` (from `pipe.generate`)."""
    if not isinstance(pipe, CTFPipeline):
        raise CtfgenError("coarse-to-fine views need a CTF pipeline (stage 1 + stage 2), not the baseline")
    if pipe.tokenizer is None:
        raise CtfgenError("coarse-to-fine views need the pipeline's tokenizer to decode images")
    stage2 = pipe.models[STAGE2_ROLE]
    K = stage2.config.coarse_vocab
    coarse_NL = stage1_labels(pipe, samples)
    reps_K = cluster_representatives(pipe.tokenizer.codebook(), stage2.code_to_coarse, K)
    coarse_images = pipe.decode(reps_K[torch.as_tensor(coarse_NL, dtype=torch.long)], batch_size=batch_size)
    final = samples.images
    maps = label_maps(coarse_NL, K, final.shape[1], final.shape[2])
    return CoarseViews(coarse_NL=coarse_NL, label_maps=maps, coarse_images=_rgb(coarse_images),
                       final_images=_rgb(final))


def label_maps(coarse_NL: np.ndarray, k: int, height: int, width: int) -> np.ndarray:
    """uint8 (N, height, width, 3): each token position of a square grid coloured by its coarse label
    (`cluster_colors`), blown up to the image size."""
    coarse_NL = np.asarray(coarse_NL)
    N = len(coarse_NL)
    g = int(round(coarse_NL.shape[1] ** 0.5)) if N else 1
    maps = cluster_colors(k)[coarse_NL.reshape(N, g, g)] if N else np.zeros((0, g, g, 3), np.uint8)
    return maps.repeat(height // g, axis=1).repeat(width // g, axis=2)
