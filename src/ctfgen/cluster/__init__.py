"""Coarse labels: cluster the tokenizer's codebook into K groups (see `methods` for the choices).

    from ctfgen.cluster import load_codebook, build_coarse_map, CoarseMap
    codebook_VD, tok_fp = load_codebook("runs/tokenizer")
    cmap = build_coarse_map(codebook_VD, 512, method="kmeans", tokenizer_fingerprint=tok_fp)
    cmap.save("runs/coarse_k512")
    cmap = CoarseMap.load("runs/coarse_k512"); cmap.check_tokenizer(tok_fp)
"""
from ..lazy import lazy_attributes
from .options import METHOD_OPTIONS, METHODS

# the methods need numpy and torch; the registry (options.py) does not, so the command line reads it at once
_LAZY = {"CoarseMap": "coarse_map", "build_coarse_map": "coarse_map", "load_codebook": "coarse_map",
         "cluster_codebook": "methods"}

__all__ = ["CoarseMap", "build_coarse_map", "load_codebook", "cluster_codebook", "METHODS", "METHOD_OPTIONS"]

__getattr__ = lazy_attributes(__name__, _LAZY)
