"""Stage 2 with no parameters: a fixed distribution over the members of each coarse cluster.

These answer "what is the learned stage 2 worth?". Both ignore the image, the position and the
class; each is still a proper stage 2, so CTF with it has an exact likelihood and can sample.

- "uniform":   every member of the cluster equally likely (MASC, arXiv 2510.04220, decodes a
               uniformly random member of the predicted cluster).
- "frequency": each member in proportion to how often it occurs in the training codes, with
               add-one (Laplace) smoothing so that a code never seen in training keeps a non-zero
               probability (otherwise one unseen test code makes the held-out likelihood infinite).

Both implement the stage-2 contract (models/stage2.py), so the one sampler and the one likelihood
path use them as they use the learned stage 2; `MemberPriorArtifact` is their folder (kind
"stage2_prior", `ctfgen pipeline make --stage2 RULE`), made from a coarse map (and, for "frequency",
the training code store).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import option
from ..errors import CtfgenError
from .config import PRIOR_RULES as RULES
from .stage2 import Stage2, Stage2Artifact


@dataclass
class MemberPriorConfig:
    # required fields with the rules of an `option` (config.py: check_fields reads them on load)
    rule: str = field(metadata={"help": "how members are weighted within a cluster", "choices": RULES})
    vocab_size: int = field(metadata={"help": "codebook size V", "min": 1})
    coarse_vocab: int = field(metadata={"help": "number of coarse clusters K", "min": 1})
    smoothing: float = option(1.0, "pseudo-count added to every code (rule \"frequency\"): an unseen code "
                                   "keeps probability > 0", min=0, min_open=True)

    # a prior reads neither the class nor the position: any grid and any classes fit it
    grid = None
    num_classes = None


class MemberPrior(Stage2, nn.Module):
    """log p(code | its coarse label), fixed; buffers only, so `.to(device)` moves it like a model."""

    sees_class = False
    ARTIFACT = "ctfgen.models.member_prior:MemberPriorArtifact"
    CONFIG = MemberPriorConfig

    def __init__(self, cfg: MemberPriorConfig, code_to_coarse_V: torch.Tensor, log_prob_V: torch.Tensor | None = None):
        super().__init__()
        self.keep_map(cfg, code_to_coarse_V)
        log_prob_V = torch.zeros(cfg.vocab_size) if log_prob_V is None else log_prob_V  # None: a folder fills it
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

    @property
    def stage2_name(self) -> str:
        return self.config.rule

    @classmethod
    def describe(cls, cfg: MemberPriorConfig) -> str:
        how = {"uniform": "uniformly at random among the members of its coarse cluster",
               "frequency": "among the members of its coarse cluster in proportion to its count in the training "
                            f"codes plus {cfg.smoothing:g}"}
        return (f"stage 2, parameter-free, draws each token's code {how[cfg.rule]} (the \"{cfg.rule}\" prior: it "
                "reads neither the image, the position nor the class)")

    def log_prob(self, fine_BL: torch.Tensor) -> torch.Tensor:
        """(B, L) natural-log probability of each code given its own coarse label."""
        return self.log_prob_V.double()[fine_BL.to(self.log_prob_V.device)]

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        """(B, L, M) log-probabilities of each position's cluster members (the class is not read)."""
        return self.member_table_log_probs(self.log_prob_V, coarse_BL)


class MemberPriorArtifact(Stage2Artifact):
    """A parameter-free stage 2's folder (kind "stage2_prior"): config.prior (MemberPriorConfig),
    the weights file holding code_to_coarse and log_prob_V; made_from the tokenizer, the coarse map
    and, for "frequency", the training codes."""

    KIND = "stage2_prior"
    REDO = "make it again (`ctfgen pipeline make --stage2 RULE`)"
    CONFIG_KEY = "prior"
    MODULE = "ctfgen.models.member_prior:MemberPrior"

    @classmethod
    def from_map(cls, rule: str, coarse_map, *, train_codes=None, smoothing: float = 1.0) -> "MemberPriorArtifact":
        """The prior `rule` of a coarse map (cluster/coarse_map.py: CoarseMap), counting the codes
        of `train_codes` (a CodeStore) for "frequency" (the other rules leave them unread).
        CtfgenError for an unknown rule, "frequency" without training codes, or codes of another
        tokenizer than the map's."""
        made_from = {"tokenizer": coarse_map.tokenizer_fingerprint, "coarse_map": coarse_map.fingerprint}
        codes = None
        if rule == "frequency" and train_codes is not None:
            train_codes.check_tokenizer(coarse_map.tokenizer_fingerprint)
            codes, made_from["codes"] = train_codes.codes, train_codes.fingerprint
        prior = MemberPrior.build(rule, coarse_map.code_to_coarse, k=coarse_map.k, train_codes=codes,
                                  smoothing=smoothing)
        return cls(prior, made_from=made_from)


def check_prior_flags(stage2: str, *, coarse_map=None, train_codes=None) -> None:
    """Refuse the inputs of a parameter-free stage 2 that the chosen `stage2` ("model" or a rule)
    would not read: --coarse-map only feeds a prior, --train-codes only "frequency"; and "frequency"
    without the --train-codes it counts (CtfgenError naming the flag)."""
    if stage2 == "frequency" and not train_codes:
        raise CtfgenError("--stage2 frequency needs --train-codes DIR (the training code store)")
    if coarse_map and stage2 == "model":
        raise CtfgenError("--coarse-map is read only by --stage2 uniform/frequency; the trained stage 2 "
                          "(--stage2 model) has its own clusters")
    if train_codes and stage2 != "frequency":
        raise CtfgenError(f"--train-codes is read only by --stage2 frequency (its counts); --stage2 {stage2} "
                          "would ignore it")
