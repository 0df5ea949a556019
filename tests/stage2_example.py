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
        return within_clusters(self.scores_CV, self.code_to_coarse, self.config.coarse_vocab)

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        return member_columns(self, self.log_prob_CV()[class_B][:, None, :], coarse_BL)


class ClassTableArtifact(Stage2Artifact):
    KIND = KIND
    CONFIG_KEY = "table"
    MODULE = "stage2_example:ClassTable"


def within_clusters(scores_RV: torch.Tensor, c2c_V: torch.Tensor, K: int) -> torch.Tensor:
    """(R, V) scores log-normalised within each code's cluster."""
    lse_RK = torch.stack([torch.logsumexp(scores_RV[:, c2c_V == k], dim=1) for k in range(K)], dim=1)
    return scores_RV - lse_RK[:, c2c_V]


def member_columns(stage2: Stage2, logp_BLV: torch.Tensor, coarse_BL: torch.Tensor) -> torch.Tensor:
    """(B, L, M) the members' columns of per-code log-probabilities (B or 1, L or 1, V)."""
    t = stage2.member_tables()
    members_BLM = t.members_KM[coarse_BL]
    B, L, M = members_BLM.shape
    out_BLM = logp_BLV.expand(B, L, -1).gather(2, members_BLM)
    return out_BLM.masked_fill(t.padding(coarse_BL.flatten()).view(B, L, M), float("-inf"))


# ---- a second one: reads the position and a grid, not the class (num_classes None, grid set)

POSITION_KIND = "stage2_position_table"
POSITION_REGISTRY_LINE = {POSITION_KIND: "stage2_example:PositionTableArtifact"}


@dataclass
class PositionTableConfig:
    vocab_size: int
    coarse_vocab: int
    grid: int
    num_classes = None  # reads no class: any classes fit


class PositionTable(Stage2, nn.Module):
    """log p(code | cluster, position) from free scores (grid*grid, V), normalised within each cluster."""

    sees_class = False
    CONFIG = PositionTableConfig

    @property
    def stage2_name(self) -> str:
        return "position-table"

    def __init__(self, cfg: PositionTableConfig, code_to_coarse_V: torch.Tensor, scores_LV: torch.Tensor | None = None):
        super().__init__()
        self.keep_map(cfg, code_to_coarse_V)
        if scores_LV is None:
            scores_LV = torch.zeros(cfg.grid * cfg.grid, cfg.vocab_size)
        self.register_buffer("scores_LV", torch.as_tensor(scores_LV).float().clone())

    def check_length(self, L: int) -> None:
        if L != self.config.grid ** 2:
            raise CtfgenError(f"position table of a {self.config.grid}x{self.config.grid} grid, got {L} tokens")

    def log_prob_LV(self) -> torch.Tensor:
        """(L, V) log p(code | its cluster, position)."""
        return within_clusters(self.scores_LV, self.code_to_coarse, self.config.coarse_vocab)

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        return member_columns(self, self.log_prob_LV()[None], coarse_BL)


class PositionTableArtifact(Stage2Artifact):
    KIND = POSITION_KIND
    CONFIG_KEY = "table"
    MODULE = "stage2_example:PositionTable"
