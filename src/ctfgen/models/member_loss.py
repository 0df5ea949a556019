"""Stage 2's training loss, three ways: the cross-entropy of the cluster-masked head.

Stage 2 predicts each position's codebook index among the members of its coarse cluster only, so
the loss needs the logits of those members, not of the whole codebook. The three formulations give
the same loss and gradients (tests/test_models.py) and differ only in speed and memory:

- "loop":   positions and head rows sorted by cluster, one (n_k, D) x (D, M_k) matmul per cluster.
            The fewest FLOPs (N*V/K*D), but 2K small kernels a step plus a host sync: cheap on a CPU,
            launch-bound on a GPU (K = 512: thousands of launches a step).
- "gather": each position's cluster members gathered into an (N, M) block (M = the largest
            cluster), one batched matmul over (N, M, D) gathered head rows. No Python loop, but
            N*M*D memory and a scatter-add backward; M grows with the most crowded cluster.
- "masked": the full (N, V) head, -inf outside the cluster. K times the head FLOPs of the others
            in one large matmul (tensor cores), N*V logits in memory.

`resolve_impl("auto", ...)` picks one per device (and, on a CPU, by the cluster sizes);
`ctfgen bench aux-loss` measures all three (docs/GPU.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CtfgenError

IMPLS = ("loop", "gather", "masked")
# What "auto" picks (docs/GPU.md has the measurements). CPU, measured with `ctfgen bench aux-loss`:
# gather wins when every cluster is about the same size (M close to V/K), loop when they are
# uneven as k-means makes them (M a few times V/K). CUDA: not measured yet; one large matmul is
# what tensor cores are built for, and its cost does not depend on how uneven the clusters are.
GATHER_MAX_SPREAD = 1.25  # on a CPU, gather while the largest cluster is at most this times the mean


def resolve_impl(impl: str, device: torch.device, tables: "ClusterTables | None" = None) -> str:
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


def cluster_blocks(labels_N: torch.Tensor, K: int) -> tuple[torch.Tensor, list[int]]:
    """The order that sorts `labels_N` into contiguous blocks by cluster (stable), and each block's
    size: how stage 2 groups positions (and head rows) so that each cluster is one small matmul."""
    return torch.argsort(labels_N, stable=True), torch.bincount(labels_N, minlength=K).tolist()


@dataclass
class ClusterTables:
    """What the formulations need to know about the clustering, derived from code_to_coarse (V,)."""

    code_order_V: torch.Tensor  # codes sorted by cluster (stable: ascending code within a cluster)
    members_per_K: list[int]  # cluster sizes
    col_V: torch.Tensor  # each code's column inside its cluster (its rank among the members)
    members_KM: torch.Tensor  # (K, M) member codes, padded with code 0 past the cluster's size
    counts_K: torch.Tensor  # (K,) cluster sizes, on the device


def cluster_tables(code_to_coarse_V: torch.Tensor, K: int) -> ClusterTables:
    code_order_V, members_per_K = cluster_blocks(code_to_coarse_V, K)
    device = code_to_coarse_V.device
    counts_K = torch.tensor(members_per_K, device=device)
    starts_K = torch.cumsum(counts_K, 0) - counts_K
    col_V = torch.empty_like(code_order_V)
    col_V[code_order_V] = (torch.arange(len(code_order_V), device=device)
                           - starts_K[code_to_coarse_V[code_order_V]])
    M = max(members_per_K) if members_per_K else 0
    members_KM = torch.zeros(K, M, dtype=torch.long, device=device)
    members_KM[code_to_coarse_V[code_order_V], col_V[code_order_V]] = code_order_V
    return ClusterTables(code_order_V, members_per_K, col_V, members_KM, counts_K)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on h runs in: the autocast dtype when autocast is on, else h's."""
    kind = h.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return h.dtype


def loss_loop(h_ND, coarse_N, codes_N, weight_VD, t: ClusterTables):
    K = len(t.members_per_K)
    w_parts = weight_VD[t.code_order_V].split(t.members_per_K)
    pos_order_N, rows_per_K = cluster_blocks(coarse_N, K)
    h_parts = h_ND[pos_order_N].split(rows_per_K)
    target_parts = t.col_V[codes_N[pos_order_N]].split(rows_per_K)
    total = h_ND.new_zeros((), dtype=torch.float32)
    hits = torch.zeros((), dtype=torch.long, device=h_ND.device)
    for k in range(K):
        if rows_per_K[k] == 0:
            continue
        logits_nM = (h_parts[k] @ w_parts[k].T).float()
        total = total + F.cross_entropy(logits_nM, target_parts[k], reduction="sum")
        with torch.no_grad():
            hits += (logits_nM.argmax(-1) == target_parts[k]).sum()
    n = max(len(coarse_N), 1)
    return total / n, hits.float() / n


def loss_gather(h_ND, coarse_N, codes_N, weight_VD, t: ClusterTables):
    dtype = _compute_dtype(h_ND)
    members_NM = t.members_KM[coarse_N]
    # gather from the weight already in the matmul dtype: under autocast an fp32 (N, M, D) copy
    # would double the block's memory
    w_NMD = F.embedding(members_NM, weight_VD.to(dtype))
    logits_NM = torch.bmm(w_NMD, h_ND.to(dtype)[:, :, None]).squeeze(-1).float()
    M = members_NM.shape[1]
    padding_NM = torch.arange(M, device=h_ND.device)[None, :] >= t.counts_K[coarse_N][:, None]
    logits_NM = logits_NM.masked_fill(padding_NM, float("-inf"))
    target_N = t.col_V[codes_N]
    loss = F.cross_entropy(logits_NM, target_N)
    with torch.no_grad():
        acc = (logits_NM.argmax(-1) == target_N).float().mean()
    return loss, acc


def loss_masked(h_ND, coarse_N, codes_N, weight_VD, code_to_coarse_V):
    logits_NV = F.linear(h_ND, weight_VD).float()
    outside_NV = code_to_coarse_V[None, :] != coarse_N[:, None]
    logits_NV = logits_NV.masked_fill(outside_NV, float("-inf"))
    loss = F.cross_entropy(logits_NV, codes_N)
    with torch.no_grad():
        acc = (logits_NV.argmax(-1) == codes_N).float().mean()
    return loss, acc
