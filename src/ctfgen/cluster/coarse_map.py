"""The coarse-label map: which coarse label (cluster) each codebook index (fine label) belongs to.

Saved as an artifact folder: `coarse_map.safetensors` (code_to_coarse, members, counts) and
`manifest.json` (kind "coarse_map"; config: k, method, seed, options; made_from: the tokenizer's
fingerprint). Later stages check `made_from` so a map is never used with another tokenizer's codes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..artifacts import Artifact, artifact_dir, check_made_from, fingerprint_tensors
from ..config import to_dict
from ..errors import ArtifactError, CtfgenError
from ..filecheck import load_safetensors

KIND = "coarse_map"
TENSORS = "coarse_map.safetensors"


def load_codebook(tokenizer_dir: str | os.PathLike) -> tuple[torch.Tensor, str]:
    """The raw (V, D) codebook of a tokenizer artifact and the tokenizer's fingerprint.

    Reads only the codebook tensor, so it needs neither the model code nor the rest of the weights.
    """
    from ..tokenizer.artifact import TokenizerArtifact

    return TokenizerArtifact.read_codebook(tokenizer_dir)


@dataclass
class CoarseMapConfig:
    """How a map was made: what its manifest's config holds."""

    k: int  # number of clusters K
    method: str  # clustering method (cluster/methods.py), or "custom"/"modulo" for hand-made labels
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the method's resolved options


@dataclass
class CoarseMap(Artifact):
    """The map and its member table; an artifact folder (KIND, TENSORS) with `save` and `load`."""

    KIND: ClassVar[str] = KIND
    code_to_coarse: torch.Tensor  # (V,) long, coarse label of every code
    members: torch.Tensor  # (K, M) long, codes of each cluster in ascending order, padded with -1
    counts: torch.Tensor  # (K,) long, cluster sizes (>= 1)
    k: int
    method: str
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    tokenizer_fingerprint: str = ""

    @classmethod
    def from_labels(
        cls,
        labels: torch.Tensor | np.ndarray,
        *,
        k: int | None = None,
        method: str = "custom",
        seed: int = 0,
        options: dict[str, Any] | None = None,
        tokenizer_fingerprint: str = "",
    ) -> "CoarseMap":
        """Build the member table from per-code labels; every label in [0, k) must be used."""
        if isinstance(labels, torch.Tensor):
            labels_V = labels.detach().cpu().long().reshape(-1)
        else:
            labels_V = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        if labels_V.numel() == 0:
            raise CtfgenError("coarse labels are empty")
        k = int(labels_V.max()) + 1 if k is None else int(k)
        if k < 2:
            raise CtfgenError(f"a coarse map needs K >= 2 clusters, got K={k}")
        if int(labels_V.min()) < 0 or int(labels_V.max()) >= k:
            raise CtfgenError(f"coarse labels must lie in [0, {k}), got [{int(labels_V.min())}, {int(labels_V.max())}]")
        counts_K = torch.bincount(labels_V, minlength=k)
        if bool((counts_K == 0).any()):
            empty = torch.nonzero(counts_K == 0).flatten()[:5].tolist()
            raise CtfgenError(f"coarse labels leave cluster(s) {empty} empty; every one of the K={k} must be used")
        # Stable sort by label keeps codes ascending inside each cluster.
        order_V = torch.sort(labels_V, stable=True).indices
        starts_K = torch.cumsum(counts_K, 0) - counts_K
        rank_V = torch.arange(labels_V.numel()) - starts_K[labels_V[order_V]]
        members_KM = torch.full((k, int(counts_K.max())), -1, dtype=torch.long)
        members_KM[labels_V[order_V], rank_V] = order_V
        return cls(labels_V.clone(), members_KM, counts_K, k, method, int(seed), dict(options or {}), tokenizer_fingerprint)

    # ------------------------------------------------------------ queries

    @property
    def num_codes(self) -> int:
        return int(self.code_to_coarse.numel())

    @property
    def fingerprint(self) -> str:
        return fingerprint_tensors({"code_to_coarse": self.code_to_coarse}, extra={"k": self.k, "method": self.method})

    @property
    def made_from(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_fingerprint}

    @property
    def config(self) -> CoarseMapConfig:
        return CoarseMapConfig(self.k, self.method, self.seed, self.options)

    def sizes(self) -> dict[str, float]:
        c = self.counts.double()
        return {"min": int(c.min()), "mean": float(c.mean()), "max": int(c.max())}

    def coarse_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Coarse labels of a tensor of codes (any shape)."""
        return self.code_to_coarse.to(codes.device)[codes]

    def member_mask(self) -> torch.Tensor:
        """(K, V) bool: True where code v belongs to cluster k (for confining stage-2 logits)."""
        mask_KV = torch.zeros(self.k, self.num_codes, dtype=torch.bool)
        mask_KV[self.code_to_coarse, torch.arange(self.num_codes)] = True
        return mask_KV

    def random_member(self, coarse: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random code from each given cluster (same shape as `coarse`)."""
        counts = self.counts.to(coarse.device)[coarse]
        u = torch.rand(coarse.shape, generator=generator, device="cpu").to(coarse.device)
        slot = (u * counts).long().clamp_max(counts - 1)
        return self.members.to(coarse.device)[coarse, slot]

    def check_tokenizer(self, fingerprint: str) -> None:
        """Refuse to be used with codes from a tokenizer other than the one this map was made from."""
        check_made_from(
            "coarse map / tokenizer",
            self.tokenizer_fingerprint,
            fingerprint,
            hint=f"the coarse map was clustered from tokenizer {self.tokenizer_fingerprint}; run `ctfgen cluster` on this tokenizer",
        )

    # ------------------------------------------------------------ files

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False, info: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        tensors = {"code_to_coarse": self.code_to_coarse, "members": self.members, "counts": self.counts}
        with artifact_dir(out_dir, overwrite=overwrite) as tmp:
            save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp / TENSORS))
            self.write_manifest(tmp, config=to_dict(self.config),
                                info={"num_codes": self.num_codes, "sizes": self.sizes(), **(info or {})})
        return Path(out_dir)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CoarseMap":
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        path = folder / TENSORS
        if not path.is_file():
            raise ArtifactError(f"coarse map tensors not found: {path}")
        tensors = load_safetensors(folder, manifest, TENSORS, redo="re-run `ctfgen cluster`")
        cfg = cls.typed_config(folder, manifest, CoarseMapConfig)
        if "code_to_coarse" not in tensors:
            raise ArtifactError(f"{path} has no tensor 'code_to_coarse'")
        try:
            cmap = cls.from_labels(tensors["code_to_coarse"], k=cfg.k, method=cfg.method, seed=cfg.seed,
                                   options=cfg.options,
                                   tokenizer_fingerprint=str(manifest["made_from"].get("tokenizer", "")))
        except CtfgenError as e:
            raise ArtifactError(f"{path}: {e}") from None
        # The stored member table must agree with the map; a mismatch means a damaged or edited file.
        for name in ("members", "counts"):
            if name in tensors and not torch.equal(tensors[name].long(), getattr(cmap, name)):
                raise ArtifactError(f"{path}: '{name}' does not match 'code_to_coarse'")
        if cmap.fingerprint != manifest["fingerprint"]:
            raise ArtifactError(
                f"{path}: content fingerprint {cmap.fingerprint} differs from manifest fingerprint {manifest['fingerprint']}"
            )
        cmap.manifest = manifest
        return cmap


def build_coarse_map(
    codebook_VD: torch.Tensor,
    k: int,
    *,
    method: str = "kmeans",
    seed: int = 0,
    normalize: bool = True,
    tokenizer_fingerprint: str = "",
    **opts: Any,
) -> CoarseMap:
    """Cluster a codebook and wrap the labels, recording every setting that produced them."""
    from .methods import cluster_codebook, resolve_options

    labels_V = cluster_codebook(codebook_VD, k, method=method, seed=seed, normalize=normalize, **opts)
    options = {"normalize": normalize, **resolve_options(method, opts)}
    return CoarseMap.from_labels(
        labels_V, k=k, method=method, seed=seed, options=options, tokenizer_fingerprint=tokenizer_fingerprint
    )
