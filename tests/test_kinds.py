"""Kinds as specs: model kinds and pipeline types are told apart by their table rows
(models/config.py: KINDS, STAGE2_FOLDERS; sample/pipeline_folder.py: ROLES), never by comparing
their names; and adding a kind is its row and its class (docs/ARCHITECTURE.md, "Adding a model")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ctfgen.models.config import KINDS, Kind

SRC = Path(__file__).resolve().parents[1] / "src" / "ctfgen"
TABLES = {"models/config.py"}  # the modules that hold the tables themselves
# TEMPORARY: files of the trainer's branch (issue 21, h21trainer) that still compare kind names; the
# coordinator empties this list when the branches merge. Nothing may be added to it.
NOT_YET = {"train/trainer.py", "train/bench.py", "gpucheck/training.py"}

NAMES = "|".join(sorted({*KINDS, "prior", "ctf"}))
SUBJECT = r"(?:\b\w*kind|\btype|\brole)\b(?:['\"]\])?"  # also r["kind"]
PATTERNS = [
    # kind == "aux", cfg.kind != "baseline", pipe.type == "ctf", r["kind"] == "aux", role != "aux"
    re.compile(rf"{SUBJECT}\s*(?:==|!=)\s*['\"](?:{NAMES})['\"]"),
    re.compile(rf"['\"](?:{NAMES})['\"]\s*(?:==|!=)\s*[\w.]*(?:kind|type|role)\b"),
    # kind in ("ar", "baseline") as a test (a `for kind in (...)` loop is not one)
    re.compile(rf"(?<!for ){SUBJECT}\s+(?:not\s+)?in\s+[(\[{{]\s*['\"](?:{NAMES})['\"]"),
    re.compile(r"hasattr\([^)]*['\"]loss_impl['\"]"),
]


def offenders() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in TABLES:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(p.search(code) for p in PATTERNS):
                found.setdefault(rel, []).append(f"{rel}:{n}: {line.strip()}")
    return found


def test_no_kind_or_pipeline_type_is_compared_by_name_outside_the_tables():
    found = offenders()
    bad = [line for rel, lines in found.items() if rel not in NOT_YET for line in lines]
    assert not bad, "compare the table's row (KINDS[kind].member_head, spec.needs_coarse_map, " \
                    "pipe.coarse_to_fine, the stage-2 contract), not the name:\n" + "\n".join(bad)


def test_the_temporary_allowlist_only_shrinks():
    found = offenders()
    stale = sorted(NOT_YET - set(found))
    assert not stale, f"{stale} no longer compare kind names: drop them from NOT_YET"


@pytest.mark.parametrize("line, hit", [
    ('if cfg.kind == "aux":', True), ("if kind != 'baseline':", True), ('if pipe.type == "ctf":', True),
    ('x = r["kind"] == "aux"', True), ('if kind in ("ar", "aux"):', True), ('if hasattr(model, "loss_impl"):', True),
    ('if "aux" == role:', True), ('for kind in ("ar", "aux", "baseline"):', False), ('if kind == "vary":', False),
    ('if device.type == "cuda":', False), ('if rule == "frequency":', False),
])
def test_the_grep_finds_what_it_should(line, hit):
    assert any(p.search(line) for p in PATTERNS) == hit


# ---------------------------------------------------------------- adding a kind

class TinyCausal(torch.nn.Module):
    """A new kind's class: built from its config (the trainer then calls loss_sum)."""

    ARTIFACT = "ctfgen.models.artifact:TrainedModel"

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.emb = torch.nn.Embedding(cfg.in_vocab, cfg.dim)
        self.head = torch.nn.Linear(cfg.dim, cfg.out_vocab, bias=False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def test_a_new_kind_is_its_row_and_its_class(monkeypatch, tmp_path):
    """The recipe of docs/ARCHITECTURE.md: a KINDS row naming the class; the builders, the parameter
    count and the model folder then handle it unchanged."""
    from ctfgen.models import build_model, count_params
    from ctfgen.models.artifact import TrainedModel

    monkeypatch.setitem(KINDS, "coarse_bag", Kind("test: coarse labels in, coarse labels out", reads="coarse",
                                                  predicts="coarse", model=f"{__name__}:TinyCausal"))
    spec = KINDS["coarse_bag"]
    assert spec.model_class is TinyCausal and spec.batch_keys == ("coarse", "label") and spec.needs_coarse_map
    model = build_model("coarse_bag", "tiny", vocab_size=64, coarse_vocab=8, num_classes=3, grid=4)
    assert isinstance(model, TinyCausal) and model.head.out_features == 8
    assert count_params("coarse_bag", "tiny", vocab_size=64, coarse_vocab=8, num_classes=3, grid=4) == model.num_params()
    TrainedModel(model, made_from={"tokenizer": "T"}).save(tmp_path / "m")
    back = TrainedModel.load(tmp_path / "m", expect_kind="coarse_bag").module
    assert isinstance(back, TinyCausal) and torch.equal(back.head.weight, model.head.weight)
