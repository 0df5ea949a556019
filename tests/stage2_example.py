"""A third stage 2, as a newcomer would add one (docs/ARCHITECTURE.md, "Adding a stage 2"): a
per-class member table, p(code | its cluster, class), with no dependence on the position.

This module and one line in `models/config.py: STAGE2_FOLDERS` (tests/test_stage2.py sets it with
monkeypatch.setitem) are all it takes: the pipeline loads its folder, the one sampler draws from
it and `ctfgen eval nll` scores it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctfgen.models.stage2 import Stage2, Stage2Artifact

KIND = "stage2_class_table"
REGISTRY_LINE = {KIND: "stage2_example:ClassTableArtifact"}  # the one line of STAGE2_FOLDERS


@dataclass
class ClassTableConfig:
    vocab_size: int
    coarse_vocab: int
    num_classes: int
    grid = None  # reads no position: any grid fits


class ClassTable(Stage2, nn.Module):
    """log p(code | cluster, class) from free scores (C, V), normalised within each cluster."""

    ARTIFACT = "stage2_example:ClassTableArtifact"
    CONFIG = ClassTableConfig

    @property
    def stage2_name(self) -> str:
        return "class-table"

    def __init__(self, cfg: ClassTableConfig, code_to_coarse_V: torch.Tensor, scores_CV: torch.Tensor | None = None):
        super().__init__()
        self.keep_map(cfg, code_to_coarse_V)
        if scores_CV is None:  # filled by the folder's weights
            scores_CV = torch.zeros(cfg.num_classes, cfg.vocab_size)
        self.register_buffer("scores_CV", torch.as_tensor(scores_CV).float().clone())

    def log_prob_CV(self) -> torch.Tensor:
        """(C, V) log p(code | its cluster, class)."""
        c2c_V, K = self.code_to_coarse, self.config.coarse_vocab
        lse_CK = torch.stack([torch.logsumexp(self.scores_CV[:, c2c_V == k], dim=1) for k in range(K)], dim=1)
        return self.scores_CV - lse_CK[:, c2c_V]

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        t = self.member_tables()
        members_BLM = t.members_KM[coarse_BL]
        rows_BV = self.log_prob_CV()[class_B]
        B, L, M = members_BLM.shape
        out_BLM = rows_BV.gather(1, members_BLM.reshape(B, L * M)).view(B, L, M)
        return out_BLM.masked_fill(t.padding(coarse_BL.flatten()).view(B, L, M), float("-inf"))


class ClassTableArtifact(Stage2Artifact):
    KIND = KIND
    CONFIG_KEY = "table"
    MODULE = "stage2_example:ClassTable"
