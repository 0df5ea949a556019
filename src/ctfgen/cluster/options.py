"""The clustering methods' registry, torch-free so that the command line offers them (`--method`,
`--cluster-method`, `--methods`) without importing the methods: each name, a line of help, and the
options it accepts with their defaults (recorded in the coarse-map artifact), and their check. The
methods themselves are in methods.py (`_RUNNERS`)."""
from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import CtfgenError


class Method(NamedTuple):
    help: str  # one line, for `ctfgen cluster --help`
    options: dict[str, Any]  # the options it accepts, with their defaults


# Adding a method: a row here and its function in methods.py `_RUNNERS`; every flag that takes a
# method, the coarse map's manifest and `cluster_codebook` then know it by name.
METHODS: dict[str, Method] = {
    "kmeans": Method("k-means++ then Lloyd (faiss), the paper's choice (default)", {"max_iter": 50}),
    "balanced": Method("equal-size clusters (sizes differ by at most 1), as in IAR", {"max_iter": 20}),
    "random": Method("random equal-size groups, the control the paper reports as failing", {}),
    "agglomerative": Method("ward merging over a k-nearest-neighbour graph of codewords (DCPE-style "
                            "neighbourhood grouping instead of centroid distance)", {"n_neighbors": 5, "linkage": "ward"}),
    "average": Method("average linkage (UPGMA) over the whole codebook, no graph: MASC's choice; sizes unbalanced",
                      {}),
}
# the agglomerative method's merge criteria (scikit-learn's)
LINKAGES = ("ward", "average", "complete", "single")
# each method's options with their defaults (read from METHODS)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {name: m.options for name, m in METHODS.items()}


def resolve_options(method: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, unknown or invalid options refused by name."""
    if method not in METHODS:
        raise CtfgenError(f"unknown clustering method '{method}'; choose one of {', '.join(METHODS)}")
    known = METHODS[method].options
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise CtfgenError(f"unknown option(s) {unknown} for method '{method}'; known: {sorted(known) or 'none'}")
    resolved = {**known, **opts}
    for name in ("max_iter", "n_neighbors"):
        if name in resolved and (not isinstance(resolved[name], int) or resolved[name] < 1):
            raise CtfgenError(f"option {name} for method '{method}' must be a positive integer, got {resolved[name]!r}")
    if method == "agglomerative" and resolved["linkage"] not in LINKAGES:
        raise CtfgenError(f"option linkage must be one of {', '.join(LINKAGES)}, got {resolved['linkage']!r}")
    return resolved
