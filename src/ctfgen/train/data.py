"""Training data: token sequences from a codes store, one random augmentation view per image.

The order is a pure function of (seed, epoch, step), never of a generator's running state, so a
resumed run sees exactly the batches the uninterrupted run would have seen: the checkpoint only
needs the step. Each optimizer step consumes one global batch of the epoch's permutation; that batch
is cut into world_size * grad_accum equal micro-batches, rank r taking the r-th contiguous block, so
the union of what all ranks see in a step does not depend on how many ranks there are.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..artifacts import check_made_from
from ..config import check_class_ids
from ..errors import ArtifactError, CtfgenError
from ..models.config import KINDS

if TYPE_CHECKING:
    from ..cluster import CoarseMap
    from ..codes import CodeStore


def check_inputs(kind: str, codes: CodeStore, coarse: CoarseMap | None, *, codes_dir: str = "",
                 coarse_dir: str = "") -> None:
    """Refuse combinations that cannot train a model of `kind` (KINDS)."""
    if codes.codes.ndim != 3 or codes.codes.shape[0] != codes.labels.shape[0]:
        raise ArtifactError(f"codes store {codes_dir}: codes.npy {codes.codes.shape} and labels.npy "
                            f"{codes.labels.shape} do not form (N, views, L) and (N,)")
    h, w = codes.grid
    if codes.codes.shape[2] != h * w:
        raise ArtifactError(f"codes store {codes_dir}: sequences of length {codes.codes.shape[2]} "
                            f"do not match grid {h}x{w}")
    if h != w:
        raise CtfgenError(f"codes store {codes_dir}: grid {h}x{w} is not square; the models need a square grid")
    # CodeStore.open checks this too; a store built in memory has not been through it
    check_class_ids(codes.labels, codes.num_classes, where=f"codes store {codes_dir}: labels.npy")
    if not KINDS[kind].needs_coarse_map:
        return
    if coarse is None:
        raise CtfgenError(f"kind '{kind}' predicts or reads coarse labels: give the coarse map with "
                          "--coarse-map DIR (made by `ctfgen cluster`)")
    check_made_from(f"tokenizer of coarse map {coarse_dir} vs codes {codes_dir}",
                    codes.tokenizer_fingerprint, coarse.tokenizer_fingerprint,
                    hint="the coarse map was made from another tokenizer than these codes; "
                         "cluster this tokenizer's codebook or use codes from the same tokenizer")
    if coarse.code_to_coarse.numel() != codes.vocab_size:
        raise ArtifactError(f"coarse map {coarse_dir} maps {coarse.code_to_coarse.numel()} codes, "
                            f"but the codebook of {codes_dir} has {codes.vocab_size}")


class TokenDataset:
    """Items are dicts: codes (L,) long, label () long, and coarse (L,) long when a map is given.

    The view of each image is drawn per epoch from a generator seeded by (seed, epoch), like
    LlamaGen's random pick among pre-extracted ten-crop/flip views. With `coarse_draws`, `batch`
    adds each sample's "coarse_draws" (2, L) float32 uniforms (stage 2's coarse noise, see
    AuxTransformer.noised_positions) from a generator seeded by (seed, step, sample index): a
    sample's draws are its own, whichever micro-batch or rank it lands in.
    """

    def __init__(self, codes: np.ndarray, labels: np.ndarray, *, code_to_coarse: torch.Tensor | None = None,
                 seed: int = 0, coarse_draws: bool = False):
        self.codes = codes
        self.labels = np.asarray(labels, dtype=np.int64)
        self.code_to_coarse = None if code_to_coarse is None else code_to_coarse.long().cpu()
        self.seed = seed
        self.coarse_draws = coarse_draws
        self.epoch = 0
        self._views = self.views_for_epoch(0)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.codes.shape[2])

    def views_for_epoch(self, epoch: int) -> np.ndarray:
        n_views = int(self.codes.shape[1])
        if n_views == 1:
            return np.zeros(len(self), dtype=np.int64)
        return np.random.default_rng([self.seed, epoch, 1]).integers(0, n_views, size=len(self))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._views = self.views_for_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        one = self.batch(np.array([i]))
        return {k: v[0] for k, v in one.items()}

    def batch(self, indices: np.ndarray, step: int = 0) -> dict[str, torch.Tensor]:
        """The samples `indices` of optimizer step `step` (the step seeds their coarse draws)."""
        indices = np.asarray(indices, dtype=np.int64)
        codes = torch.from_numpy(np.asarray(self.codes[indices, self._views[indices]], dtype=np.int64))
        out = {"codes": codes, "label": torch.from_numpy(self.labels[indices])}
        if self.code_to_coarse is not None:
            out["coarse"] = self.code_to_coarse[codes]
        if self.coarse_draws:
            out["coarse_draws"] = torch.from_numpy(np.stack([
                np.random.default_rng([self.seed, step, int(i), 2]).random((2, self.seq_len), dtype=np.float32)
                for i in indices]))
        return out


class BatchOrder:
    """Which samples each rank uses at each micro-step: a function of (seed, step) only."""

    def __init__(self, n: int, global_batch: int, *, seed: int = 0):
        if n < global_batch:
            raise CtfgenError(f"the codes hold {n} images, fewer than one global batch of {global_batch}; "
                              "lower --batch-size")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.steps_per_epoch = n // global_batch  # the incomplete last batch is dropped
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of optimizer step `step` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 0]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def micro_batch(self, step: int, *, rank: int = 0, world_size: int = 1, micro: int = 0,
                    grad_accum: int = 1) -> np.ndarray:
        parts = world_size * grad_accum
        if self.global_batch % parts:
            raise CtfgenError(f"global batch {self.global_batch} does not split into {world_size} rank(s) x "
                              f"{grad_accum} micro-step(s); choose --batch-size divisible by {parts}")
        size = self.global_batch // parts
        epoch, b = self.position(step)
        batch = self.permutation(epoch)[b * self.global_batch:(b + 1) * self.global_batch]
        start = (rank * grad_accum + micro) * size
        return batch[start:start + size]
