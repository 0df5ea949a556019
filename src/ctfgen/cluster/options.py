"""The clustering methods' registry, torch-free so that the command line offers them (`--method`,
`--cluster-method`) without importing the methods: each name, the options it accepts with their
defaults (recorded in the coarse-map artifact), and their check. The methods themselves are in
methods.py (`_RUNNERS`)."""
from __future__ import annotations

from typing import Any

from ..errors import CtfgenError

METHODS = ("kmeans", "balanced", "random", "agglomerative", "average")

# Options each method accepts, with their defaults (recorded in the coarse-map artifact).
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "kmeans": {"max_iter": 50},
    "balanced": {"max_iter": 20},
    "random": {},
    "agglomerative": {"n_neighbors": 5, "linkage": "ward"},
    "average": {},
}


def resolve_options(method: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, unknown or invalid options refused by name."""
    if method not in METHODS:
        raise CtfgenError(f"unknown clustering method '{method}'; choose one of {', '.join(METHODS)}")
    known = METHOD_OPTIONS[method]
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise CtfgenError(f"unknown option(s) {unknown} for method '{method}'; known: {sorted(known) or 'none'}")
    resolved = {**known, **opts}
    for name in ("max_iter", "n_neighbors"):
        if name in resolved and (not isinstance(resolved[name], int) or resolved[name] < 1):
            raise CtfgenError(f"option {name} for method '{method}' must be a positive integer, got {resolved[name]!r}")
    if method == "agglomerative" and resolved["linkage"] not in ("ward", "average", "complete", "single"):
        raise CtfgenError(f"option linkage must be ward, average, complete or single, got {resolved['linkage']!r}")
    return resolved
