"""docs/ARCHITECTURE.md's recipes "add a setting" and "add a clustering method", done: each makes the
one change the recipe names and checks that everything the recipe promises follows from it."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from ctfgen.apps.cli import _util, build_parser
from ctfgen.config import check_fields, item_list, option
from ctfgen.errors import CtfgenError


def _parser_of(cls, **flag_options) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    _util.add_config_flags(p, cls, **flag_options)
    return p


def test_adding_a_setting_is_one_field():
    """A field with `option` in a config that derives from the experiments' Recipe: its flag, help with
    bounds and default, parse-time check and the config's own check all follow."""
    from ctfgen.experiments.demo import DemoConfig

    @dataclasses.dataclass
    class Extended(DemoConfig):
        dropout: float = option(0.1, "dropout of every model", min=0.0, max=1.0, max_open=True)
        widths: tuple[int, ...] = option((64, 128), "widths to try", min=8)
        names: str = option("a,b", "names, kept as text", items=str, choices=("a", "b", "c"))

    p = _parser_of(Extended)
    help_of = {a.dest: a.help for a in p._actions}
    assert help_of["dropout"] == "dropout of every model, in [0, 1) (default: 0.1)"
    assert help_of["widths"] == "widths to try, >= 8 (default: 64,128)"
    args = p.parse_args(["--dropout", "0.5", "--widths", "8,16,32", "--names", "c,a", "--steps", "7"])
    cfg = _util.config_from_args(Extended, args)
    assert (cfg.dropout, cfg.widths, cfg.steps, item_list(cfg, "names")) == (0.5, (8, 16, 32), 7, ["c", "a"])
    # the inherited settings keep theirs: --steps and --cluster-method are the demo's flags
    assert set(vars(p.parse_args([]))) > {f.name for f in dataclasses.fields(DemoConfig)} - {"data"}
    for argv in (["--dropout", "1"], ["--widths", "8,4"], ["--names", "a,d"], ["--widths", "8,x"]):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            p.parse_args(argv)
    for bad, message in ((dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1"),
                         (dict(widths=(8, 4)), "widths item must be >= 8, got 4"),
                         (dict(names="a,d"), "names item must be one of"),
                         (dict(names=""), "names needs at least one value")):
        with pytest.raises(CtfgenError, match=message):
            check_fields(Extended(**bad))


def test_adding_a_training_setting_is_one_field(monkeypatch, capsys):
    """A field with `option` in TrainConfig: `ctfgen train` gets its flag (help with bounds and default,
    parse-time check, exit 2 on a bad value) and hands its value to the run's config, with no line in
    apps/cli/train.py."""
    import ctfgen.train
    import ctfgen.train.config
    from ctfgen.apps.cli import main
    from ctfgen.train.config import TrainConfig

    @dataclasses.dataclass
    class WithEps(TrainConfig):
        adam_eps: float = option(1e-8, "AdamW epsilon", min=0.0, min_open=True)

    monkeypatch.setattr(ctfgen.train.config, "TrainConfig", WithEps)  # what the command line's flags are made from
    monkeypatch.setattr(ctfgen.train, "TrainConfig", WithEps)  # what `ctfgen train` builds the run's config with
    ran = []
    monkeypatch.setattr(ctfgen.train, "train", lambda cfg, **kw: ran.append(cfg) or _no_records())
    for kind in ("ar", "aux", "baseline"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["train", kind, "--help"])
        assert exit_.value.code == 0
        assert "--adam-eps ADAM_EPS AdamW epsilon, > 0 (default: 1e-08)" in " ".join(capsys.readouterr().out.split())
        with pytest.raises(SystemExit) as exit_:
            main(["train", kind, "--codes", "c", "--out", "o", "--steps", "1", "--adam-eps", "0"])
        assert exit_.value.code == 2 and "--adam-eps: expected a number > 0, got '0'" in capsys.readouterr().err
    assert main(["train", "ar", "--codes", "c", "--out", "o", "--steps", "1", "--adam-eps", "1e-6"]) == 0
    assert len(ran) == 1 and ran[0].adam_eps == 1e-6
    # TrainConfig's own fields have theirs too (AdamW's betas had none before)
    assert build_parser().parse_args(["train", "ar", "--codes", "c", "--out", "o", "--steps", "1",
                                      "--beta2", "0.99"]).beta2 == 0.99


def _no_records():
    from types import SimpleNamespace

    return SimpleNamespace(records=[])


def test_a_default_of_an_experiment_is_the_recipes_field_again():
    from ctfgen.config import option_of
    from ctfgen.experiments.quality import QualityConfig
    from ctfgen.experiments.recipe import Recipe

    steps = {f.name: f for f in dataclasses.fields(QualityConfig)}["steps"]
    assert steps.default == 1000 and steps.metadata["min"] == 1
    again = option_of(Recipe, "lr", 1e-3)
    assert again.default == 1e-3 and again.metadata["min_open"] and again.metadata["help"].startswith("learning rate")


def test_adding_a_clustering_method_is_one_row_and_one_function(monkeypatch):
    """A row in cluster/options.py METHODS and its function in methods.py _RUNNERS: `cluster_codebook`
    runs it (empty clusters filled, numbered canonically), its options are checked, and every flag
    that takes a method offers it, with its help."""
    from ctfgen.cluster import METHODS, cluster_codebook
    from ctfgen.cluster import methods as cluster_methods
    from ctfgen.cluster.options import Method

    def first_k(x_VD, k, rng, *, seed, shift):
        return (np.arange(len(x_VD)) + shift) % k

    monkeypatch.setitem(METHODS, "modulo", Method("code id modulo K (a test method)", {"shift": 0}))
    monkeypatch.setitem(cluster_methods._RUNNERS, "modulo", first_k)
    codebook_VD = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    labels_V = cluster_codebook(codebook_VD, 3, method="modulo", shift=1)
    assert sorted(set(labels_V.tolist())) == [0, 1, 2] and labels_V[0] == 0  # renumbered canonically
    with pytest.raises(CtfgenError, match="unknown option"):
        cluster_codebook(codebook_VD, 3, method="modulo", max_iter=3)
    parser = build_parser()
    args = parser.parse_args(["cluster", "--tokenizer", "t", "--out", "o", "--method", "modulo"])
    assert args.method == "modulo"
    assert parser.parse_args(["demo", "--cluster-method", "modulo"]).cluster_method == "modulo"
    assert parser.parse_args(["analyze", "redundancy", "--tokenizer", "t", "--out", "o",
                              "--methods", "modulo"]).methods == ["modulo"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["cluster"]
    assert "modulo: code id modulo K (a test method)." in sub.epilog
