"""Stage 2's cluster-restricted head: the member tables of a clustering and the members' logits.

Stage 2 gives each position a distribution over the members of its coarse cluster only. Its logits
are an (N, M) block, M the largest cluster: column j of a position in cluster k scores code
`members_KM[k, j]`; columns past the cluster's size are -inf. Training (models/member_loss.py),
sampling (sample/sampler.py) and the likelihood (evaluate/nll.py) all read this one layout, from
tables that the model derives once from its `code_to_coarse` buffer (`MemberTables.member_tables`).

Two ways to compute the block, equal up to float rounding (tests/test_models.py):
- "loop":   positions and head rows sorted by cluster, one (n_k, D) x (D, M_k) matmul per cluster:
            the fewest FLOPs (N * V/K * D), 2K small kernels and a host sync;
- "gather": each position's member rows gathered into (N, M, D), one batched matmul.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CtfgenError

LOGIT_IMPLS = ("loop", "gather")


def cluster_blocks(labels_N: torch.Tensor, K: int) -> tuple[torch.Tensor, list[int]]:
    """The order that groups N items by cluster (stable), and each block's size: how positions (and
    head rows) are grouped so that each cluster is one small matmul."""
    return torch.argsort(labels_N, stable=True), torch.bincount(labels_N, minlength=K).tolist()


@dataclass
class ClusterTables:
    """What the head needs to know about the clustering, derived from code_to_coarse (V,)."""

    code_order_V: torch.Tensor  # codes sorted by cluster (stable: ascending code within a cluster)
    members_per_K: list[int]  # cluster sizes, on the host
    col_V: torch.Tensor  # each code's column inside its cluster (its rank among the members)
    members_KM: torch.Tensor  # (K, M) member codes, padded with code 0 past the cluster's size
    counts_K: torch.Tensor  # (K,) cluster sizes, on the device

    def padding(self, coarse_N: torch.Tensor) -> torch.Tensor:
        """(N, M) bool: the columns past each position's cluster size."""
        M = self.members_KM.shape[1]
        return torch.arange(M, device=coarse_N.device)[None, :] >= self.counts_K[coarse_N][:, None]

    def codes(self, coarse_N: torch.Tensor, col_N: torch.Tensor) -> torch.Tensor:
        """(N,) the codes at columns `col_N` of the positions' clusters. A column past the cluster
        (which float rounding in a sampler could reach) is read as the cluster's last member."""
        return self.members_KM[coarse_N, col_N.minimum(self.counts_K[coarse_N] - 1)]


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


class MemberTables:
    """For modules with a `code_to_coarse` buffer (V,) and `config.coarse_vocab`: the member tables,
    built at the first call and again only when the buffer is replaced (`.to()`, a new tensor) or
    written to (`set_code_to_coarse`, `load_state_dict`), not at every step."""

    def member_tables(self) -> ClusterTables:
        c2c = self.code_to_coarse
        if c2c.is_meta:
            raise CtfgenError("the member tables need the values of code_to_coarse, which a model on the "
                              "meta device does not hold")
        cached = self.__dict__.get("_member_tables")
        if cached is None or cached[0] is not c2c or cached[1] != c2c._version:
            if len(c2c) and int(c2c.min()) < 0:
                raise CtfgenError("code_to_coarse is not set: pass it to build_model or load a checkpoint")
            # plain tensors even when first asked for under inference_mode (sampling): a training
            # step that reuses them must be able to save them for backward
            with torch.inference_mode(False):
                tables = cluster_tables(c2c, self.config.coarse_vocab)
            self.__dict__["_member_tables"] = (c2c, c2c._version, tables)
        return self.__dict__["_member_tables"][2]


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on h runs in: the autocast dtype when autocast is on, else h's."""
    kind = h.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return h.dtype


def logits_loop(h_ND: torch.Tensor, coarse_N: torch.Tensor, weight_VD: torch.Tensor, t: ClusterTables) -> torch.Tensor:
    """(N, M) float32 member logits, one matmul per cluster present."""
    K, M = len(t.members_per_K), t.members_KM.shape[1]
    w_parts = weight_VD[t.code_order_V].split(t.members_per_K)
    pos_order_N, rows_per_K = cluster_blocks(coarse_N, K)
    h_parts = h_ND[pos_order_N].split(rows_per_K)
    blocks = [F.pad((h_parts[k] @ w_parts[k].T).float(), (0, M - t.members_per_K[k]), value=float("-inf"))
              for k in range(K) if rows_per_K[k]]
    if not blocks:
        return h_ND.new_zeros((0, M), dtype=torch.float32)
    inverse_N = torch.empty_like(pos_order_N)
    inverse_N[pos_order_N] = torch.arange(len(pos_order_N), device=pos_order_N.device)
    return torch.cat(blocks)[inverse_N]


def logits_gather(h_ND: torch.Tensor, coarse_N: torch.Tensor, weight_VD: torch.Tensor, t: ClusterTables) -> torch.Tensor:
    """(N, M) float32 member logits, one batched matmul over the gathered head rows."""
    dtype = _compute_dtype(h_ND)
    # gather from the weight already in the matmul dtype: under autocast an fp32 (N, M, D) copy
    # would double the block's memory
    w_NMD = F.embedding(t.members_KM[coarse_N], weight_VD.to(dtype))
    logits_NM = torch.bmm(w_NMD, h_ND.to(dtype)[:, :, None]).squeeze(-1).float()
    return logits_NM.masked_fill(t.padding(coarse_N), float("-inf"))
