"""One loader shape (issue 21, hindrance 5): every folder kind in docs/ARCHITECTURE.md's Artifacts
table loads with `Kind.load(folder)`, which returns an instance of that kind, and what a folder was
made from is read from that artifact, never from attributes stuck onto the module it holds."""
from __future__ import annotations

import importlib
import inspect
import re
import shutil
from pathlib import Path

import pytest
import torch

from ctfgen.artifacts import MANIFEST, Artifact, ModuleArtifact, read_manifest
from ctfgen.models.config import STAGE2_FOLDERS, resolve

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "tests" / "fixtures" / "release-0.1.0"
STUCK = ("manifest", "fingerprint", "made_from", "loaded_weights", "import_notes")  # provenance, the artifact's


def documented_kinds() -> dict[str, type]:
    """kind -> artifact class, as the Artifacts table of docs/ARCHITECTURE.md names them."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Artifacts\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)`[^|]*\| `([\w/]+)\.py: (\w+)`", section, re.M)
    return {kind: getattr(importlib.import_module("ctfgen." + path.replace("/", ".")), name)
            for kind, path, name in rows}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A folder of every documented kind: the release fixtures, and a stage-2 prior made from their map."""
    from ctfgen.cluster import CoarseMap
    from ctfgen.models.member_prior import MemberPriorArtifact

    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for d in sorted(RELEASE.iterdir()):
        if (d / MANIFEST).is_file() and not read_manifest(d).get("info", {}).get("unfinished"):
            out.setdefault(read_manifest(d)["kind"], shutil.copytree(d, root / d.name))
    MemberPriorArtifact.from_map("uniform", CoarseMap.load(out["coarse_map"])).save(root / "prior")
    out[MemberPriorArtifact.KIND] = root / "prior"
    return out


def test_the_table_names_every_kind_and_every_stage2_folder():
    kinds = documented_kinds()
    assert {"tokenizer", "codes", "coarse_map", "model", "classifier", "pipeline"} <= set(kinds)
    assert all(issubclass(cls, Artifact) and cls.KIND == kind for kind, cls in kinds.items())
    for kind, where in STAGE2_FOLDERS.items():  # every stage-2 folder kind is a documented kind
        assert kinds.get(kind) is resolve(where), kind


@pytest.mark.parametrize("kind", sorted(documented_kinds()))
def test_kind_load_returns_the_kind_with_provenance_on_the_artifact(kind, folders):
    cls = documented_kinds()[kind]
    assert inspect.ismethod(cls.load) and cls.load.__self__ is cls  # a classmethod of the kind itself
    art = cls.load(folders[kind])
    assert type(art) is cls
    assert art.fingerprint == read_manifest(folders[kind])["fingerprint"]
    assert art.made_from == read_manifest(folders[kind]).get("made_from", {})
    if isinstance(art, ModuleArtifact):
        stuck = [a for a in STUCK if a in vars(art.module)]
        assert not stuck, f"{cls.__name__}.load stuck {stuck} onto its module"


def test_convenience_loader_gives_the_same_bare_module(folders):
    from ctfgen.tokenizer import load_tokenizer
    from ctfgen.tokenizer.artifact import TokenizerArtifact

    tok, art = load_tokenizer(folders["tokenizer"]), TokenizerArtifact.load(folders["tokenizer"])
    assert not any(a in vars(tok) for a in STUCK)
    assert all(torch.equal(a, b) for a, b in zip(tok.state_dict().values(), art.module.state_dict().values()))
    import ctfgen.models.artifact as models_artifact
    import ctfgen.train as train

    assert not hasattr(models_artifact, "load_model") and "load_model" not in train.__all__  # no tuple shape
