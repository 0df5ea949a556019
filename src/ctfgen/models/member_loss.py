"""Stage 2's training loss, three ways: the cross-entropy of the cluster-masked head.

Stage 2 predicts each position's codebook index among the members of its coarse cluster only, so
the loss needs the logits of those members, not of the whole codebook. The three formulations give
the same loss and gradients (tests/test_models.py) and differ only in speed and memory:

- "loop":   `AuxTransformer.member_logits` by one (n_k, D) x (D, M_k) matmul per cluster
            (models/members.py). The fewest FLOPs (N*V/K*D), but 2K small kernels a step plus a
            host sync: cheap on a CPU, launch-bound on a GPU (K = 512: thousands of launches a step).
- "gather": `AuxTransformer.member_logits` by one batched matmul over (N, M, D) gathered head rows
            (M = the largest cluster). No Python loop, but N*M*D memory and a scatter-add backward;
            M grows with the most crowded cluster.
- "masked": the full (N, V) head, -inf outside the cluster. K times the head FLOPs of the others
            in one large matmul (tensor cores), N*V logits in memory; needs no member tables.

`resolve_impl("auto", ...)` picks one per device (and, on a CPU, by the cluster sizes);
`ctfgen bench aux-loss` measures all three (docs/GPU.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CtfgenError
from .config import AUX_LOSS_IMPLS as IMPLS
from .members import ClusterTables

# What "auto" picks (docs/GPU.md has the measurements). CPU, measured with `ctfgen bench aux-loss`:
# gather wins when every cluster is about the same size (M close to V/K), loop when they are
# uneven as k-means makes them (M a few times V/K). CUDA: not measured yet; one large matmul is
# what tensor cores are built for, and its cost does not depend on how uneven the clusters are.
GATHER_MAX_SPREAD = 1.25  # on a CPU, gather while the largest cluster is at most this times the mean


def resolve_impl(impl: str, device: torch.device, tables: ClusterTables | None = None) -> str:
    """The formulation `impl` stands for on `device`; "auto" looks at the cluster sizes on a CPU."""
    if impl not in ("auto",) + IMPLS:
        raise CtfgenError(f"aux loss formulation {impl!r} is not one of {('auto',) + IMPLS}")
    if impl != "auto":
        return impl
    if device.type in ("cuda", "meta"):  # on meta (shape checks) it is the only one that runs
        return "masked"
    if tables is not None and tables.members_per_K:
        mean = sum(tables.members_per_K) / len(tables.members_per_K)
        if max(tables.members_per_K) <= GATHER_MAX_SPREAD * mean:
            return "gather"
    return "loop"


def member_cross_entropy(logits_NM: torch.Tensor, target_N: torch.Tensor,
                         reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (of float32 logits; reduction "mean" or "sum" over the N rows) and mean accuracy
    of (N, C) logits against (N,) target indices."""
    loss = F.cross_entropy(logits_NM, target_N, reduction=reduction)
    with torch.no_grad():
        acc = (logits_NM.argmax(-1) == target_N).float().mean()
    return loss, acc


def loss_masked(h_ND, coarse_N, codes_N, weight_VD, code_to_coarse_V, reduction: str = "mean"):
    """The full (N, V) head, -inf outside each position's cluster: needs no tables (so it also runs
    on the meta device), at K times the others' head FLOPs."""
    logits_NV = F.linear(h_ND, weight_VD).float()
    outside_NV = code_to_coarse_V[None, :] != coarse_N[:, None]
    return member_cross_entropy(logits_NV.masked_fill(outside_NV, float("-inf")), codes_N, reduction)
