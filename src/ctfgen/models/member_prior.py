"""Stage 2 with no parameters: a fixed distribution over the members of each coarse cluster.

These answer "what is the learned stage 2 worth?". Both ignore the image, the position and the
class; each is still a proper stage 2, so CTF with it has an exact likelihood and can sample.

- "uniform":   every member of the cluster equally likely (MASC, arXiv 2510.04220, decodes a
               uniformly random member of the predicted cluster).
- "frequency": each member in proportion to how often it occurs in the training codes, with
               add-one (Laplace) smoothing so that a code never seen in training keeps a non-zero
               probability (otherwise one unseen test code makes the held-out likelihood infinite).

The sampler reads `member_logits` (sample/sampler.py: sample_from_prior), the likelihood code
`log_prob`; both work on codebook indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import CtfgenError
from .members import MemberTables

RULES = ("uniform", "frequency")


@dataclass
class MemberPriorConfig:
    rule: str
    vocab_size: int  # codebook size V
    coarse_vocab: int  # K
    kind: str = "prior"  # not a trained model kind: pipelines and reports tell it from "aux" by this
    smoothing: float = 1.0  # pseudo-count added to every code (rule "frequency")


class MemberPrior(MemberTables, nn.Module):
    """log p(code | its coarse label), fixed; buffers only, so `.to(device)` moves it like a model."""

    def __init__(self, cfg: MemberPriorConfig, code_to_coarse_V: torch.Tensor, log_prob_V: torch.Tensor):
        super().__init__()
        self.config = cfg
        self.register_buffer("code_to_coarse", torch.as_tensor(code_to_coarse_V).long().clone())
        self.register_buffer("log_prob_V", torch.as_tensor(log_prob_V).float().clone())

    @classmethod
    def build(cls, rule: str, code_to_coarse_V: torch.Tensor, *, k: int,
              train_codes: np.ndarray | None = None, smoothing: float = 1.0) -> "MemberPrior":
        """rule "uniform" needs only the map; "frequency" counts codes in `train_codes` (any shape).

        Raises CtfgenError for an unknown rule, or "frequency" without training codes.
        """
        if rule not in RULES:
            raise CtfgenError(f"stage-2 rule must be one of {RULES}, got {rule!r}")
        c2c_V = torch.as_tensor(code_to_coarse_V).long().cpu()
        V = len(c2c_V)
        if rule == "uniform":
            mass_V = torch.ones(V, dtype=torch.float64)
        else:
            if train_codes is None:
                raise CtfgenError("stage-2 rule 'frequency' needs the training codes (--train-codes)")
            if smoothing <= 0:
                raise CtfgenError(f"smoothing must be > 0 (an unseen code needs probability > 0), got {smoothing}")
            counts_V = np.bincount(np.asarray(train_codes, dtype=np.int64).ravel(), minlength=V)
            if len(counts_V) > V:
                raise CtfgenError(f"training codes hold index {len(counts_V) - 1}, outside the codebook of {V}")
            mass_V = torch.from_numpy(counts_V).double() + smoothing
        total_K = torch.zeros(k, dtype=torch.float64).index_add_(0, c2c_V, mass_V)
        log_prob_V = (mass_V / total_K[c2c_V]).log()
        return cls(MemberPriorConfig(rule=rule, vocab_size=V, coarse_vocab=k, smoothing=smoothing), c2c_V, log_prob_V)

    def log_prob(self, fine_BL: torch.Tensor) -> torch.Tensor:
        """(B, L) natural-log probability of each code given its own coarse label."""
        return self.log_prob_V.double()[fine_BL.to(self.log_prob_V.device)]

    def member_logits(self, coarse_N: torch.Tensor) -> torch.Tensor:
        """(N, M) log-probabilities of each position's cluster members (column j = members[coarse, j]),
        -inf past the cluster's size: the layout of AuxTransformer.member_logits, which the stage-2
        sampler (sample/sampler.py: sample_from_prior) draws from."""
        t = self.member_tables()
        coarse_N = coarse_N.to(t.members_KM.device)
        return self.log_prob_V.float()[t.members_KM[coarse_N]].masked_fill(t.padding(coarse_N), float("-inf"))
