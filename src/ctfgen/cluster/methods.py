"""Clustering algorithms that turn a codebook (V, D) into coarse labels (V,) in [0, K).

Every method returns labels with no empty cluster, canonically numbered (cluster ids ordered by
their smallest member code), and is deterministic for a given seed on a given machine.

Methods
-------
kmeans (default)
    Lloyd's k-means (faiss) from a greedy k-means++ initialisation (numpy, seeded). The paper
    leaves open whether codewords are normalised; LlamaGen's VQ looks codes up by cosine
    similarity of L2-normalised vectors, so we cluster the normalised codewords by default
    (`normalize=False` clusters the raw vectors). Duplicate codewords are clustered once, weighted
    by how often they occur, so identical vectors always share a coarse label.
balanced
    Equal-size clusters as in IAR (sizes V // K or V // K + 1). Each Lloyd step assigns codes
    under a capacity limit: in rounds, every unassigned code proposes to its nearest centre that
    still has room, and each centre accepts its closest proposers up to its remaining capacity.
    All of this is vectorised numpy, so a round costs one (unassigned x open) distance argmin.
random
    A random equal-size grouping: the control the paper reports as failing.
agglomerative
    Groups by the codebook's own neighbourhood structure instead of distance to a centroid,
    following DCPE's argument that centroid k-means groups codewords badly: a k-nearest-neighbour
    graph over the (normalised) codewords (faiss, `n_neighbors=5`) restricts merges to codewords
    that are neighbours, and bottom-up ward merging joins the instances into K groups
    (scikit-learn's AgglomerativeClustering). Ward is the default because average/single linkage
    chain through the graph: on 16384 random unit vectors, K=512 average linkage puts ~15000
    codes in one cluster. Duplicates are merged before clustering (unweighted, so a pile of dead
    codes does not dominate the tree). Slower than k-means (seconds at 16384 codes); a one-off.
average
    Average linkage (UPGMA) over the whole codebook, with no neighbourhood graph: MASC's choice
    (arXiv 2510.04220), which reports it beats k-means for CTF-L (FID 2.97 -> 2.51). The tree of
    the (normalised) distinct codewords is built with scipy (`scipy.cluster.hierarchy.linkage`,
    Euclidean, O(V^2) memory: ~1 GB at V = 16384) and cut into K clusters. Unlike k-means it makes
    no effort to balance sizes: outlying codewords end up as small clusters of their own.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..errors import CtfgenError

from .options import METHOD_OPTIONS, METHODS, resolve_options  # noqa: F401  (the registry, torch-free)


def cluster_codebook(
    codebook_VD: torch.Tensor | np.ndarray,
    k: int,
    *,
    method: str = "kmeans",
    seed: int = 0,
    normalize: bool = True,
    **opts: Any,
) -> torch.Tensor:
    """Coarse label of every codeword: a (V,) LongTensor with values in [0, k), no cluster empty."""
    x_VD = _as_matrix(codebook_VD)
    n_codes = x_VD.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise CtfgenError(f"K must be an integer, got {k!r}")
    if not 2 <= k <= n_codes:
        raise CtfgenError(f"K must be between 2 and the codebook size {n_codes}, got K={k}")
    k = int(k)
    resolved = resolve_options(method, opts)
    if normalize:
        # Zero vectors (never-trained codes) stay zero instead of becoming NaN.
        x_VD = x_VD / np.maximum(np.linalg.norm(x_VD, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    # Codebook-sized matrix products are too small to gain from BLAS threads (see SMALL_FAISS_WORK).
    with threadpool_limits(limits=1 if n_codes * k < SMALL_FAISS_WORK else None, user_api="blas"):
        labels_V = _RUNNERS[method](x_VD, k, rng, seed=seed, **resolved)
    labels_V = fill_empty_clusters(labels_V, x_VD, k)
    return torch.from_numpy(canonical_labels(labels_V, k)).long()


def _as_matrix(codebook_VD: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(codebook_VD, torch.Tensor):
        codebook_VD = codebook_VD.detach().cpu().float().numpy()
    x_VD = np.asarray(codebook_VD, dtype=np.float32)
    if x_VD.ndim != 2 or x_VD.shape[0] == 0 or x_VD.shape[1] == 0:
        raise CtfgenError(f"codebook must be a non-empty (V, D) matrix, got shape {tuple(x_VD.shape)}")
    if not np.isfinite(x_VD).all():
        raise CtfgenError("codebook contains NaN or infinite values")
    return np.ascontiguousarray(x_VD)


# ---------------------------------------------------------------- shared pieces


def kmeans_pp_init(x_ND: np.ndarray, k: int, rng: np.random.Generator, weights_N: np.ndarray | None = None) -> np.ndarray:
    """Indices of k seeds by greedy k-means++ (best of 2 + log k candidates per step)."""
    # k small products in a loop: BLAS threads only add hand-off cost (10x slower on a busy CPU).
    with threadpool_limits(limits=1, user_api="blas"):
        return _kmeans_pp_init(x_ND, k, rng, weights_N)


def _kmeans_pp_init(x_ND: np.ndarray, k: int, rng: np.random.Generator, weights_N: np.ndarray | None) -> np.ndarray:
    n = x_ND.shape[0]
    x_ND = np.ascontiguousarray(x_ND, dtype=np.float32)
    xt_DN = np.ascontiguousarray(x_ND.T)
    w_N = np.ones(n, dtype=np.float32) if weights_N is None else weights_N.astype(np.float32)
    n_trials = 2 + int(np.log(k))
    sq_N = (x_ND**2).sum(1)
    first = int(rng.choice(n, p=w_N.astype(np.float64) / w_N.sum(dtype=np.float64)))
    seeds = [first]
    d2_N = np.maximum(sq_N + sq_N[first] - 2.0 * (x_ND[first] @ xt_DN), 0.0)
    for _ in range(1, k):
        cum = np.cumsum(w_N * d2_N, dtype=np.float64)
        if cum[-1] <= 0:  # every point already coincides with a seed: take any unused point
            cand_T = rng.choice(np.setdiff1d(np.arange(n), seeds), size=1)
        else:
            cand_T = np.minimum(np.searchsorted(cum, rng.random(n_trials) * cum[-1], side="right"), n - 1)
        dc_TN = x_ND[cand_T] @ xt_DN
        dc_TN *= -2.0
        dc_TN += sq_N[None]
        dc_TN += sq_N[cand_T][:, None]
        np.maximum(dc_TN, 0.0, out=dc_TN)  # rounding can make a point's distance to itself negative
        new_TN = np.minimum(d2_N[None], dc_TN, out=dc_TN)
        best = int(np.argmin(new_TN @ w_N))
        d2_N = new_TN[best]
        seeds.append(int(cand_T[best]))
    return np.asarray(seeds)


def sq_distances(x_ND: np.ndarray, c_KD: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances, in the inputs' dtype (float32 keeps it memory-light)."""
    d_NK = x_ND @ c_KD.T
    d_NK *= -2.0
    d_NK += (x_ND**2).sum(1)[:, None]
    d_NK += (c_KD**2).sum(1)[None]
    return np.maximum(d_NK, 0.0, out=d_NK)


def fill_empty_clusters(labels_V: np.ndarray, x_VD: np.ndarray, k: int) -> np.ndarray:
    """Give every empty cluster half of the largest one, split along its main axis of variation.

    Deterministic: the largest cluster is the lowest id among ties, and members are ordered by
    (rounded projection, code index), so identical codewords are split by index.
    """
    labels_V = np.asarray(labels_V, dtype=np.int64).copy()
    counts_K = np.bincount(labels_V, minlength=k)
    for empty in np.flatnonzero(counts_K == 0):
        big = int(np.argmax(counts_K))
        members = np.flatnonzero(labels_V == big)
        centred_MD = x_VD[members].astype(np.float64) - x_VD[members].astype(np.float64).mean(0)
        proj_M = np.zeros(len(members))
        if np.abs(centred_MD).max() > 1e-9:
            _, _, vt_DD = np.linalg.svd(centred_MD, full_matrices=False)
            axis_D = vt_DD[0] * np.sign(vt_DD[0][np.argmax(np.abs(vt_DD[0]))])  # fix SVD's sign freedom
            proj_M = np.round(centred_MD @ axis_D, 6)
        order = members[np.lexsort((members, proj_M))]
        moved = order[len(order) // 2 :]
        labels_V[moved] = empty
        counts_K[big] -= len(moved)
        counts_K[empty] = len(moved)
    return labels_V


def canonical_labels(labels_V: np.ndarray, k: int) -> np.ndarray:
    """Renumber clusters by their smallest member code, so equal partitions get equal labels."""
    first_K = np.full(k, len(labels_V), dtype=np.int64)
    np.minimum.at(first_K, labels_V, np.arange(len(labels_V)))
    rank_K = np.empty(k, dtype=np.int64)
    rank_K[np.argsort(first_K, kind="stable")] = np.arange(k)
    return rank_K[labels_V]


def _on_unique(
    x_VD: np.ndarray, k: int, run: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Cluster the distinct codewords once (`run(unique_UD, counts_U)`), then map back to all codes."""
    unique_UD, inverse_V, counts_U = np.unique(x_VD, axis=0, return_inverse=True, return_counts=True)
    inverse_V = inverse_V.reshape(-1)
    if len(unique_UD) <= k:
        # Not enough distinct vectors: one cluster each; the empties are filled by splitting later.
        return inverse_V.astype(np.int64)
    return np.asarray(run(unique_UD, counts_U), dtype=np.int64)[inverse_V]


# ---------------------------------------------------------------- the methods


def _kmeans(x_VD: np.ndarray, k: int, rng: np.random.Generator, *, seed: int, max_iter: int) -> np.ndarray:
    import faiss

    def run(unique_UD: np.ndarray, counts_U: np.ndarray) -> np.ndarray:
        weights_U = counts_U.astype(np.float32)
        init_KD = unique_UD[kmeans_pp_init(unique_UD, k, rng, weights_U)]
        km = faiss.Kmeans(
            unique_UD.shape[1], k, niter=max_iter, seed=seed, verbose=False,
            # Use every point (faiss subsamples above 256 per centroid) and stay quiet below 39.
            max_points_per_centroid=1 << 30, min_points_per_centroid=1,
        )
        with _faiss_threads(1 if len(unique_UD) * k < SMALL_FAISS_WORK else None):
            km.train(unique_UD, weights=weights_U, init_centroids=np.ascontiguousarray(init_KD))
            _, nearest_U1 = km.index.search(unique_UD, 1)
        return nearest_U1[:, 0]

    return _on_unique(x_VD, k, run)


# Below this many point-centre pairs a Lloyd step takes milliseconds, and OpenMP threads cost more
# than they save: 16384 x 512 took 0.2 s on 1 thread but 1.6-2.3 s on 2 threads of a busy 2-core box.
SMALL_FAISS_WORK = 1 << 25


@contextlib.contextmanager
def _faiss_threads(n: int | None) -> Iterator[None]:
    import faiss

    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def capacitated_assign(d_VK: np.ndarray, capacity_K: np.ndarray) -> np.ndarray:
    """Assign every row to a column without exceeding `capacity_K` (sum(capacity) >= V).

    Rounds of proposals: each unassigned row proposes to its nearest column with room left; each
    column accepts its closest proposers (ties by row index) up to its remaining room.
    """
    n_rows, n_cols = d_VK.shape
    labels_V = np.full(n_rows, -1, dtype=np.int64)
    room_K = capacity_K.astype(np.int64).copy()
    pending = np.arange(n_rows)
    while len(pending):
        open_cols = np.flatnonzero(room_K > 0)
        if len(pending) == n_rows and len(open_cols) == n_cols:
            sub_PO = d_VK  # first round: no copy of the full matrix
        else:
            sub_PO = d_VK[np.ix_(pending, open_cols)]
        best_P = np.argmin(sub_PO, axis=1)
        choice_P = open_cols[best_P]
        dist_P = sub_PO[np.arange(len(pending)), best_P]
        order = np.lexsort((pending, dist_P, choice_P))  # by column, then distance, then row
        cols_sorted = choice_P[order]
        starts = np.searchsorted(cols_sorted, cols_sorted, side="left")
        rank = np.arange(len(order)) - starts
        accept = order[rank < room_K[cols_sorted]]
        labels_V[pending[accept]] = choice_P[accept]
        room_K -= np.bincount(choice_P[accept], minlength=n_cols)
        pending = np.setdiff1d(pending, pending[accept], assume_unique=True)
    return labels_V


def _balanced(x_VD: np.ndarray, k: int, rng: np.random.Generator, *, seed: int, max_iter: int) -> np.ndarray:
    n_codes = x_VD.shape[0]
    base, extra = divmod(n_codes, k)
    capacity_K = np.full(k, base, dtype=np.int64)
    capacity_K[:extra] += 1
    # Start from unconstrained k-means centres: the capacity-limited steps then only need to move
    # codes at the borders, so they settle in a few iterations instead of dozens.
    unconstrained_V = _kmeans(x_VD, k, rng, seed=seed, max_iter=max(5, max_iter // 2))
    centres_KD = _means(x_VD, fill_empty_clusters(unconstrained_V, x_VD, k), k)
    # Capacity-limited Lloyd steps are not monotone (a full centre pushes codes around), so keep
    # the best partition seen rather than the last one.
    best_V, best_cost = None, np.inf
    for _ in range(max_iter):
        labels_V = capacitated_assign(sq_distances(x_VD, centres_KD), capacity_K)
        centres_KD = _means(x_VD, labels_V, k)
        cost = float(((x_VD - centres_KD[labels_V]) ** 2).sum())
        if best_V is None or cost < best_cost * (1 - 1e-9):
            best_V, best_cost = labels_V, cost
        elif best_V is not None and np.array_equal(labels_V, best_V):
            break
    return best_V


def _means(x_VD: np.ndarray, labels_V: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster mean vectors (every cluster non-empty), via one sparse-free scatter per dim."""
    counts_K = np.bincount(labels_V, minlength=k).astype(np.float64)
    sums_KD = np.stack([np.bincount(labels_V, weights=x_VD[:, d], minlength=k) for d in range(x_VD.shape[1])], 1)
    return (sums_KD / counts_K[:, None]).astype(np.float32)


def _random(x_VD: np.ndarray, k: int, rng: np.random.Generator, *, seed: int) -> np.ndarray:
    labels_V = np.empty(x_VD.shape[0], dtype=np.int64)
    labels_V[rng.permutation(x_VD.shape[0])] = np.arange(x_VD.shape[0]) % k
    return labels_V


def knn_graph(x_ND: np.ndarray, n_neighbors: int) -> "scipy.sparse.csr_matrix":  # noqa: F821
    """Sparse (N, N) graph linking every point to its `n_neighbors` nearest others (faiss search)."""
    import faiss
    import scipy.sparse as sp

    n = x_ND.shape[0]
    index = faiss.IndexFlatL2(x_ND.shape[1])
    index.add(x_ND)
    with _faiss_threads(1 if n * n < SMALL_FAISS_WORK * 128 else None):  # up to 65536 codes
        _, nearest_NJ = index.search(x_ND, min(n_neighbors + 1, n))
    rows_NJ = np.broadcast_to(np.arange(n)[:, None], nearest_NJ.shape)
    keep = nearest_NJ != rows_NJ  # drop self-links (and faiss's -1 padding never occurs here)
    ones = np.ones(int(keep.sum()))
    return sp.csr_matrix((ones, (rows_NJ[keep], nearest_NJ[keep])), shape=(n, n))


def _agglomerative(
    x_VD: np.ndarray, k: int, rng: np.random.Generator, *, seed: int, n_neighbors: int, linkage: str
) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    def run(unique_UD: np.ndarray, counts_U: np.ndarray) -> np.ndarray:
        graph = knn_graph(unique_UD, n_neighbors)
        with warnings.catch_warnings():
            # A k-NN graph may have several components; sklearn joins them itself and warns.
            warnings.simplefilter("ignore", UserWarning)
            model = AgglomerativeClustering(n_clusters=k, connectivity=graph, linkage=linkage)
            return model.fit_predict(unique_UD)

    return _on_unique(x_VD, k, run)


def _average(x_VD: np.ndarray, k: int, rng: np.random.Generator, *, seed: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    def run(unique_UD: np.ndarray, counts_U: np.ndarray) -> np.ndarray:
        tree = linkage(unique_UD.astype(np.float64), method="average", metric="euclidean")
        # maxclust gives at most k (fewer on tied merge heights): fill_empty_clusters splits to k
        return fcluster(tree, t=k, criterion="maxclust") - 1

    return _on_unique(x_VD, k, run)


_RUNNERS: dict[str, Callable[..., np.ndarray]] = {
    "kmeans": _kmeans,
    "balanced": _balanced,
    "random": _random,
    "agglomerative": _agglomerative,
    "average": _average,
}
