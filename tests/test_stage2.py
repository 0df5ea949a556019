"""The stage-2 contract (models/stage2.py): the parameter-free priors as a pipeline role
(`ctfgen pipeline make --stage2`), and a third stage 2 added with its own module and one registry
line (tests/stage2_example.py) that samples and is scored exactly through the pipeline."""
from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfgen.apps.cli import main as cli_main
from ctfgen.models.config import STAGE2_FOLDERS

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release-0.1.0"


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    """A copy of the 0.1.0 folders: tokenizer, codes, coarse map, stage 1 (3 classes, 4x4 grid, V=64, K=8)."""
    dst = tmp_path_factory.mktemp("stage2") / "old"
    shutil.copytree(RELEASE, dst)
    return dst


def nll(capsys, *args) -> dict:
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    assert cli_main(["eval", "nll", "--quiet", *map(str, args)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads(out.read_text())


@pytest.mark.parametrize("rule", ["uniform", "frequency"])
def test_pipeline_make_with_a_prior_stage2_samples_and_scores_like_the_folders(old, tmp_path, capsys, rule):
    from ctfgen.apps.web.service import PageService
    from ctfgen.models.member_prior import MemberPrior
    from ctfgen.sample import load_pipeline

    train = ["--train-codes", old / "codes"] if rule == "frequency" else []
    make = ["pipeline", "make", "--tokenizer", old / "tokenizer", "--ar", old / "stage1", "--stage2", rule,
            "--coarse-map", old / "coarse", *train]
    assert cli_main([str(a) for a in make + ["--out", tmp_path / "pipe", "--reference"]]) == 0
    manifest = json.loads((tmp_path / "pipe" / "aux" / "manifest.json").read_text())
    assert manifest["kind"] == "stage2_prior" and manifest["config"]["prior"]["rule"] == rule
    assert set(manifest["made_from"]) == {"tokenizer", "coarse_map", *(["codes"] if train else [])}

    pipe = load_pipeline(tmp_path / "pipe")
    assert isinstance(pipe.models["aux"], MemberPrior)
    half = load_pipeline(tmp_path / "pipe", dtype=torch.bfloat16)  # the prior's table keeps float32
    assert half.models["aux"].log_prob_V.dtype == torch.float32 and torch.equal(half.models["aux"].log_prob_V,
                                                                               pipe.models["aux"].log_prob_V)
    samples = pipe.generate([0, 1, 2, 1], seed=5, stage2_temperature=1.3)
    c2c = pipe.models["aux"].code_to_coarse
    assert np.array_equal(c2c[torch.as_tensor(samples.codes)].numpy(), samples.coarse)  # members of stage 1's clusters
    assert set(samples.timings) == {"stage1_s", "stage2_s", "decode_s"}
    assert PageService(pipe).generate(PageService(pipe).defaults()).ctf_images.shape[0] > 0  # `ctfgen serve` takes it

    by_pipeline = nll(capsys, "--codes", old / "codes", "--pipeline", tmp_path / "pipe", "--out", tmp_path / "p.json")
    by_folders = nll(capsys, "--codes", old / "codes", "--ar", old / "stage1", "--stage2", rule, "--coarse-map",
                     old / "coarse", *train, "--out", tmp_path / "f.json")
    assert by_pipeline["stage2"] == rule
    for key in ("bits_per_token", "stage1_bits_per_token", "stage2_bits_per_token"):
        assert by_pipeline[key] == by_folders[key]


def test_pipeline_make_refuses_a_prior_of_another_map_or_without_its_inputs(old, tmp_path, capsys):
    from ctfgen.cluster import CoarseMap

    cmap = CoarseMap.load(old / "coarse")
    other = CoarseMap.from_labels(cmap.code_to_coarse.roll(1), k=cmap.k, tokenizer_fingerprint=cmap.tokenizer_fingerprint)
    other.save(tmp_path / "other-map")
    base = ["pipeline", "make", "--tokenizer", old / "tokenizer", "--ar", old / "stage1", "--out", tmp_path / "p"]

    def refused(*more, match):
        assert cli_main([str(a) for a in base + list(more)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(match, err), err

    refused("--stage2", "uniform", "--coarse-map", tmp_path / "other-map", match="coarse map mismatch")
    refused("--stage2", "uniform", match="needs --coarse-map")
    refused("--stage2", "frequency", "--coarse-map", old / "coarse", match="needs --train-codes")
    refused("--stage2", "uniform", "--coarse-map", old / "coarse", "--aux", old / "stage2", match="replaces --aux")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- a third stage 2

def member_table(old, name: str, seed: int, **fields):
    """The artifact of stage2_example's `name` table (its config `fields`) over the 0.1.0 coarse map."""
    import stage2_example

    from ctfgen.cluster import CoarseMap

    module, config, artifact = (getattr(stage2_example, name + end) for end in ("", "Config", "Artifact"))
    cmap = CoarseMap.load(old / "coarse")
    cfg = config(vocab_size=cmap.num_codes, coarse_vocab=cmap.k, **fields)
    scores = torch.randn(module.rows(cfg), cmap.num_codes, generator=torch.Generator().manual_seed(seed)) * 3
    return artifact(module(cfg, cmap.code_to_coarse, scores),
                    made_from={"tokenizer": cmap.tokenizer_fingerprint, "coarse_map": cmap.fingerprint})


def class_table(old):
    return member_table(old, "ClassTable", 0, num_classes=3)


@pytest.fixture
def registered(monkeypatch):
    from stage2_example import POSITION_REGISTRY_LINE, REGISTRY_LINE

    for kind, path in {**REGISTRY_LINE, **POSITION_REGISTRY_LINE}.items():
        monkeypatch.setitem(STAGE2_FOLDERS, kind, path)


def test_a_third_stage2_is_its_module_and_one_registry_line(old, tmp_path, capsys, registered):
    from ctfgen.codes import CodeStore
    from ctfgen.evaluate.nll import store_sequences
    from ctfgen.sample import load_pipeline, make_pipeline

    art = class_table(old)
    make_pipeline(tmp_path / "pipe", tokenizer=old / "tokenizer", ar=old / "stage1", aux=art)
    pipe = load_pipeline(tmp_path / "pipe")
    table = pipe.models["aux"]
    assert type(table).__name__ == "ClassTable" and torch.equal(table.scores_RV, art.module.scores_RV)

    # sampling: members of stage 1's clusters; at argmax, each class's most likely member
    samples = pipe.generate([0, 1, 2] * 2, seed=1, stage2_argmax=True)
    coarse = torch.as_tensor(samples.coarse)
    assert torch.equal(table.code_to_coarse[torch.as_tensor(samples.codes)], coarse)
    logp_CV = table.log_prob_RV()
    for i, y in enumerate(samples.labels):
        best = [int(torch.where(table.code_to_coarse == c, logp_CV[y], -torch.inf).argmax()) for c in coarse[i]]
        assert samples.codes[i].tolist() == best

    # the exact likelihood through the pipeline: stage 2's nats are the table's log-probabilities
    result = nll(capsys, "--codes", old / "codes", "--pipeline", tmp_path / "pipe", "--out", tmp_path / "n.json")
    x, y = store_sequences(CodeStore.open(old / "codes"))
    expected = -logp_CV[y[:, None], x].double().sum() / (x.numel() * np.log(2))
    assert result["stage2"] == "class-table"
    assert result["stage2_bits_per_token"] == pytest.approx(float(expected), rel=1e-6)


def test_the_third_stage2_is_a_distribution(registered):
    """Over every sequence of a 2x2 grid of 4 codes, its probabilities sum to 1 for each class."""
    from stage2_example import ClassTable, ClassTableConfig

    from ctfgen.evaluate.nll import stage2_nll

    c2c = torch.tensor([0, 1, 1, 1])
    table = ClassTable(ClassTableConfig(vocab_size=4, coarse_vocab=2, num_classes=2), c2c, torch.randn(2, 4))
    x = torch.tensor(list(itertools.product(range(4), repeat=4)))
    for label in (0, 1):
        nats = stage2_nll(table, x, torch.full((len(x),), label))
        # p(x | c) summed over the x of each coarse sequence c is 1, and there are 2^4 coarse sequences
        assert float(torch.exp(-nats).sum()) == pytest.approx(16.0, rel=1e-5)


def test_an_unregistered_stage2_folder_is_refused(old, tmp_path):
    from stage2_example import KIND

    from ctfgen.errors import ArtifactError
    from ctfgen.sample import make_pipeline

    with pytest.raises(ArtifactError, match=f"'{KIND}' folder cannot be a stage 2"):
        make_pipeline(tmp_path / "pipe", tokenizer=old / "tokenizer", ar=old / "stage1", aux=class_table(old))
    assert not (tmp_path / "pipe").exists()


# ---------------------------------------------------------------- issue 21: a newcomer's stage 2s

def position_table(old):
    return member_table(old, "PositionTable", 1, grid=4)


def test_a_stage2_with_a_grid_and_no_classes_is_scored(old, tmp_path, capsys, registered):
    """grid and num_classes are each None or not on their own (a position table reads no class)."""
    from ctfgen.codes import CodeStore
    from ctfgen.evaluate.nll import store_sequences
    from ctfgen.sample import make_pipeline

    art = position_table(old)
    make_pipeline(tmp_path / "pipe", tokenizer=old / "tokenizer", ar=old / "stage1", aux=art)
    result = nll(capsys, "--codes", old / "codes", "--pipeline", tmp_path / "pipe", "--out", tmp_path / "n.json")
    x, _ = store_sequences(CodeStore.open(old / "codes"))
    expected = -art.module.log_prob_RV().gather(1, x.T).T.double().sum() / (x.numel() * np.log(2))
    assert result["stage2"] == "position-table"
    assert result["stage2_bits_per_token"] == pytest.approx(float(expected), rel=1e-6)


def test_eval_nll_takes_any_stage2_folder_with_ar(old, tmp_path, capsys, registered):
    """--ar with --aux loads the stage-2 role through the registry, as a pipeline does."""
    from ctfgen.cluster import CoarseMap
    from ctfgen.models.member_prior import MemberPriorArtifact

    MemberPriorArtifact.from_map("uniform", CoarseMap.load(old / "coarse")).save(tmp_path / "uniform")
    class_table(old).save(tmp_path / "table")
    by_folder = nll(capsys, "--codes", old / "codes", "--ar", old / "stage1", "--aux", tmp_path / "uniform",
                    "--out", tmp_path / "u.json")
    by_rule = nll(capsys, "--codes", old / "codes", "--ar", old / "stage1", "--stage2", "uniform", "--coarse-map",
                  old / "coarse", "--out", tmp_path / "r.json")
    assert by_folder["stage2"] == "uniform" and by_folder["bits_per_token"] == by_rule["bits_per_token"]
    table = nll(capsys, "--codes", old / "codes", "--ar", old / "stage1", "--aux", tmp_path / "table",
                "--out", tmp_path / "t.json")
    assert table["stage2"] == "class-table" and table["source"]["aux"]["folder"] == str(tmp_path / "table")


def test_stage2_guidance_is_refused_by_a_class_stage2_without_it(old, tmp_path, registered, monkeypatch):
    """A stage 2 that sees the class but has no guidance of its own refuses the setting, before stage 1
    spends any time; one that does not see the class samples the same with any scale."""
    from ctfgen.errors import CtfgenError
    from ctfgen.sample import load_pipeline, make_pipeline

    make_pipeline(tmp_path / "table", tokenizer=old / "tokenizer", ar=old / "stage1", aux=class_table(old))
    pipe = load_pipeline(tmp_path / "table")

    def stage1_must_not_run(*args, **kwargs):
        raise AssertionError("stage 1 sampled before the stage-2 setting was refused")

    with monkeypatch.context() as m:
        m.setattr("ctfgen.sample.pipeline.generate_tokens", stage1_must_not_run)
        with pytest.raises(CtfgenError, match="stage2_guidance_scale 2: stage 2 'class-table'.*sees the class"):
            pipe.generate([0, 1], seed=0, stage2_guidance_scale=2.0)
    make_pipeline(tmp_path / "pos", tokenizer=old / "tokenizer", ar=old / "stage1", aux=position_table(old))
    pos = load_pipeline(tmp_path / "pos")
    plain, guided = (pos.generate([0, 1], seed=0, stage2_guidance_scale=g) for g in (1.0, 2.0))
    assert np.array_equal(plain.codes, guided.codes)


def test_an_edited_prior_config_is_refused(old, tmp_path, capsys):
    """A hand-edited stage2_prior manifest: a bad field is named on load (and by `pipeline card`);
    a valid but other rule no longer matches the fingerprint of config + weights."""
    make = ["pipeline", "make", "--tokenizer", old / "tokenizer", "--ar", old / "stage1", "--stage2", "uniform",
            "--coarse-map", old / "coarse", "--out", tmp_path / "pipe"]
    assert cli_main([str(a) for a in make]) == 0
    capsys.readouterr()
    path = tmp_path / "pipe" / "aux" / "manifest.json"
    manifest = json.loads(path.read_text())

    def refused(*args, match):
        assert cli_main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(match, err), err

    score = ("eval", "nll", "--quiet", "--codes", old / "codes", "--pipeline", tmp_path / "pipe")
    for field, value, match in (("rule", "bogus", r"config\.prior: rule must be one of \('uniform', 'frequency'\)"),
                                ("smoothing", 0.0, r"config\.prior: smoothing must be > 0"),
                                ("rule", "frequency", r"config\.prior and .*model\.safetensors do not match")):
        path.write_text(json.dumps({**manifest, "config": {"prior": {**manifest["config"]["prior"], field: value}}}))
        refused(*score, match=match)
        refused("sample", "--pipeline", tmp_path / "pipe", "--npz", tmp_path / "s.npz", match=match)
        if field != "rule" or value == "bogus":  # the card reads the config only
            refused("pipeline", "card", tmp_path / "pipe", match=match)
    assert not (tmp_path / "s.npz").exists()


def test_prior_flags_that_would_be_ignored_are_refused(old, tmp_path, capsys):
    make = ["pipeline", "make", "--tokenizer", old / "tokenizer", "--ar", old / "stage1", "--out", tmp_path / "p"]
    score = ["eval", "nll", "--quiet", "--codes", old / "codes"]

    def refused(*args, match):
        assert cli_main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(match, err), err

    refused(*make, "--stage2", "uniform", "--coarse-map", old / "coarse", "--train-codes", old / "codes",
            match="--train-codes is read only by --stage2 frequency")
    refused(*make, "--aux", old / "stage2", "--coarse-map", old / "coarse", match="--coarse-map is read only by")
    assert not (tmp_path / "p").exists()
    refused(*score, "--baseline", old / "stage1", "--stage2", "uniform", "--coarse-map", old / "coarse",
            match="--stage2 uniform with --coarse-map is CTF's stage 2")
    # the more basic fault first: a baseline has no stage 2, whatever the prior would need
    refused(*score, "--baseline", old / "stage1", "--stage2", "frequency", match="--stage2 frequency is CTF's stage 2")
    refused(*score, "--ar", old / "stage1", "--stage2", "frequency", "--coarse-map", old / "coarse",
            match="--stage2 frequency needs --train-codes DIR")
    refused(*score, "--ar", old / "stage1", "--aux", old / "stage2", "--stage2", "uniform", "--coarse-map",
            old / "coarse", match="--coarse-map: --stage2 uniform takes the clusters of the stage 2 of --aux")


def test_eval_nll_records_the_stage2_it_scored(old, tmp_path, capsys):
    """--pipeline with --stage2 RULE scores the prior: the result's source names it, not the pipeline's."""
    make = ["pipeline", "make", "--tokenizer", old / "tokenizer", "--ar", old / "stage1", "--stage2", "uniform",
            "--coarse-map", old / "coarse", "--out", tmp_path / "pipe"]
    assert cli_main([str(a) for a in make]) == 0
    pipeline_prior = json.loads((tmp_path / "pipe" / "aux" / "manifest.json").read_text())["fingerprint"]
    result = nll(capsys, "--codes", old / "codes", "--pipeline", tmp_path / "pipe", "--stage2", "frequency",
                 "--train-codes", old / "codes", "--out", tmp_path / "n.json")
    scored = result["source"]["models"]["aux"]
    assert result["stage2"] == "frequency" and scored != pipeline_prior
    assert result["source"]["aux"] == {"stage2": "frequency", "fingerprint": scored,
                                       "made_from": {"tokenizer": result["source"]["models"]["tokenizer"],
                                                     "coarse_map": result["source"]["models"]["coarse_map"],
                                                     "codes": json.loads((old / "codes" / "manifest.json")
                                                                         .read_text())["fingerprint"]}}


@pytest.mark.parametrize("codes", [64, 32])
def test_pipeline_make_names_a_coarse_map_of_another_tokenizer(old, tmp_path, capsys, codes):
    from ctfgen.cluster import CoarseMap

    cmap = CoarseMap.load(old / "coarse")
    CoarseMap.from_labels(cmap.code_to_coarse[:codes] % 4, k=4, tokenizer_fingerprint="0" * 16).save(tmp_path / "map")
    args = ["pipeline", "make", "--tokenizer", old / "tokenizer", "--ar", old / "stage1", "--stage2", "uniform",
            "--coarse-map", tmp_path / "map", "--out", tmp_path / "p"]
    assert cli_main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert re.search(r"coarse map .*map \(--coarse-map\) / tokenizer .* mismatch.*made for another tokenizer", err), err
    assert not (tmp_path / "p").exists()
