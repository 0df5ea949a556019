"""Third stage 2s, as a newcomer would add one (docs/ARCHITECTURE.md, "Adding a stage 2"): a
per-class member table, p(code | its cluster, class), with no dependence on the position; and a
per-position one, p(code | its cluster, position), that reads no class (a grid but no num_classes).

This module and a line each in `models/config.py: STAGE2_FOLDERS` (tests/test_stage2.py sets it with
monkeypatch.setitem) are all it takes: the pipeline loads its folder, the one sampler draws from
it and `ctfgen eval nll` scores it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctfgen.errors import CtfgenError
from ctfgen.models.stage2 import Stage2, Stage2Artifact

KIND = "stage2_class_table"
REGISTRY_LINE = {KIND: "stage2_example:ClassTableArtifact"}  # the one line of STAGE2_FOLDERS


@dataclass
class ClassTableConfig:
    vocab_size: int
    coarse_vocab: int
    num_classes: int
    grid = None  # reads no position: any grid fits


class MemberTable(Stage2, nn.Module):
    """log p(code | cluster, row) from free scores (R, V), normalised within each cluster; a row is
    a class (ClassTable) or a position (PositionTable)."""

    def __init__(self, cfg, code_to_coarse_V: torch.Tensor, scores_RV: torch.Tensor | None = None):
        super().__init__()
        self.keep_map(cfg, code_to_coarse_V)
        if scores_RV is None:  # filled by the folder's weights
            scores_RV = torch.zeros(self.rows(cfg), cfg.vocab_size)
        self.register_buffer("scores_RV", torch.as_tensor(scores_RV).float().clone())

    @staticmethod
    def rows(cfg) -> int:
        raise NotImplementedError

    def log_prob_RV(self) -> torch.Tensor:
        """(R, V) log p(code | its cluster, row)."""
        c2c_V, K = self.code_to_coarse, self.config.coarse_vocab
        lse_RK = torch.stack([torch.logsumexp(self.scores_RV[:, c2c_V == k], dim=1) for k in range(K)], dim=1)
        return self.scores_RV - lse_RK[:, c2c_V]

    def row_log_probs(self, class_B: torch.Tensor | None) -> torch.Tensor:
        """(B or 1, L or 1, V) the rows that score each sequence's positions."""
        raise NotImplementedError

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        t = self.member_tables()
        members_BLM = t.members_KM[coarse_BL]
        B, L, M = members_BLM.shape
        out_BLM = self.row_log_probs(class_B).expand(B, L, -1).gather(2, members_BLM)
        return out_BLM.masked_fill(t.padding(coarse_BL.flatten()).view(B, L, M), float("-inf"))


class ClassTable(MemberTable):
    """log p(code | cluster, class): a row of scores per class."""

    ARTIFACT = "stage2_example:ClassTableArtifact"
    CONFIG = ClassTableConfig
    stage2_name = "class-table"  # a class attribute serves for the contract's property

    @staticmethod
    def rows(cfg: ClassTableConfig) -> int:
        return cfg.num_classes

    def row_log_probs(self, class_B: torch.Tensor | None) -> torch.Tensor:
        return self.log_prob_RV()[class_B][:, None]


class ClassTableArtifact(Stage2Artifact):
    KIND = KIND
    CONFIG_KEY = "table"
    MODULE = "stage2_example:ClassTable"


# ---- a second one: reads the position and a grid, not the class (num_classes None, grid set)

POSITION_KIND = "stage2_position_table"
POSITION_REGISTRY_LINE = {POSITION_KIND: "stage2_example:PositionTableArtifact"}


@dataclass
class PositionTableConfig:
    vocab_size: int
    coarse_vocab: int
    grid: int
    num_classes = None  # reads no class: any classes fit


class PositionTable(MemberTable):
    """log p(code | cluster, position): a row of scores per position of the grid."""

    sees_class = False
    ARTIFACT = "stage2_example:PositionTableArtifact"
    CONFIG = PositionTableConfig
    stage2_name = "position-table"

    @staticmethod
    def rows(cfg: PositionTableConfig) -> int:
        return cfg.grid * cfg.grid

    def check_length(self, L: int) -> None:
        if L != self.config.grid ** 2:
            raise CtfgenError(f"position table of a {self.config.grid}x{self.config.grid} grid, got {L} tokens")

    def row_log_probs(self, class_B: torch.Tensor | None) -> torch.Tensor:
        return self.log_prob_RV()[None]


class PositionTableArtifact(Stage2Artifact):
    KIND = POSITION_KIND
    CONFIG_KEY = "table"
    MODULE = "stage2_example:PositionTable"
