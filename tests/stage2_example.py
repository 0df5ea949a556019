"""A third stage 2, as a newcomer would add one (docs/ARCHITECTURE.md, "Adding a stage 2"): a
per-class member table, p(code | its cluster, class), with no dependence on the position.

This module and one line in `models/config.py: STAGE2_FOLDERS` (tests/test_stage2.py sets it with
monkeypatch.setitem) are all it takes: the pipeline loads its folder, the one sampler draws from
it and `ctfgen eval nll` scores it exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ctfgen.artifacts import ModuleArtifact, fingerprint_tensors
from ctfgen.models.stage2 import Stage2

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

    def __init__(self, cfg: ClassTableConfig, code_to_coarse_V: torch.Tensor, scores_CV: torch.Tensor):
        super().__init__()
        self.config = cfg
        self.register_buffer("code_to_coarse", torch.as_tensor(code_to_coarse_V).long().clone())
        self.register_buffer("scores_CV", torch.as_tensor(scores_CV).float().clone())

    @property
    def stage2_name(self) -> str:
        return "class-table"

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


class ClassTableArtifact(ModuleArtifact):
    KIND = KIND

    @classmethod
    def config_of(cls, module: ClassTable) -> dict[str, Any]:
        return {"table": asdict(module.config)}

    @classmethod
    def fingerprint_of(cls, state: Mapping[str, torch.Tensor], module: ClassTable) -> str:
        return fingerprint_tensors(state, extra=cls.config_of(module))

    @classmethod
    def stage2_config(cls, manifest: dict, folder: str | Path = "stage 2") -> ClassTableConfig:
        return cls.typed_config(folder, manifest, ClassTableConfig, key="table")

    @classmethod
    def build(cls, folder: Path, manifest: dict) -> ClassTable:
        cfg = cls.stage2_config(manifest, folder)
        return ClassTable(cfg, torch.zeros(cfg.vocab_size, dtype=torch.long), torch.zeros(cfg.num_classes, cfg.vocab_size))

    @classmethod
    def load(cls, folder, device="cpu", *, ema=None, **kwargs) -> "ClassTableArtifact":
        return super().load(folder, device, **kwargs)
