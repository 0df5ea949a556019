"""The command line itself: nothing heavy imported to parse, every option checked at parse time
with a message naming it, every default shown in --help, and the registries the parser checks
against read from the library's torch-free modules, not copied."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import textwrap

import pytest

from ctfgen.apps.cli import _util, build_parser
from ctfgen.apps.cli import main as cli_main

HEAVY = ("torch", "numpy", "sklearn", "faiss", "matplotlib", "scipy", "PIL", "safetensors")


def _subparsers(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) of every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _subparsers(sub, (*path, name))


COMMANDS = [path for path, _ in _subparsers(build_parser())]


def test_parsing_imports_nothing_heavy():
    code = textwrap.dedent(f"""
        import sys
        import ctfgen.apps.cli
        parser = ctfgen.apps.cli.build_parser()
        for argv in (["sample", "--classes", "a"], ["train", "ar", "--lr", "-1"], ["sample", "--help"],
                     ["train", "aux", "--help"], ["train", "ar", "--model-opt", "foo=1"]):
            try:
                parser.parse_args(argv)
            except SystemExit:
                pass
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_commands_are_all_found():
    assert {("sample",), ("encode",), ("baseline", "import"), ("bench", "speed"), ("classifier", "train"),
            ("tokenizer", "import"), ("train", "baseline"), ("eval",), ("pipeline", "make")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_option_shows_its_default(path):
    parser = dict(_subparsers(build_parser()))[path]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        text = formatter._get_help_string(action)
        assert "(default" in text, f"{' '.join(path)} {action.option_strings[0]}: {text!r}"
    assert "(default" in parser.format_help()


@pytest.mark.parametrize("argv, option", [
    (["sample", "--classes", "a"], "--classes"),
    (["sample", "--classes", "1.5"], "--classes"),
    (["sample", "--classes", ""], "--classes"),
    (["sample", "--classes", "1,1"], "--classes"),
    (["sample", "--per-class", "0"], "--per-class"),
    (["sample", "--batch-size", "-3"], "--batch-size"),
    (["sample", "--cfg", "0.5"], "--guidance-scale/--cfg"),
    (["sample", "--temperature", "0"], "--temperature"),
    (["sample", "--temperature", "nan"], "--temperature"),
    (["sample", "--top-p", "0"], "--top-p"),
    (["sample", "--top-p", "1.5"], "--top-p"),
    (["sample", "--top-k", "-1"], "--top-k"),
    (["sample", "--device", "gpu"], "--device"),
    (["pipeline", "make", "--out", "x", "--stage2-temperature", "-1"], "--stage2-temperature"),
    (["train", "ar", "--codes", "c", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "ar", "--codes", "c", "--out", "o", "--preset", "huge"], "--preset"),
    (["train", "aux", "--codes", "c", "--out", "o", "--aux-coarse-noise", "1"], "--aux-coarse-noise"),
    (["train", "baseline", "--codes", "c", "--out", "o", "--model-opt", "nope=1"], "--model-opt"),
    (["train", "baseline", "--codes", "c", "--out", "o", "--model-opt", "dim"], "--model-opt"),
    (["train", "baseline", "--codes", "c", "--out", "o", "--ema", "1"], "--ema"),
    (["train", "baseline", "--codes", "c", "--out", "o", "--grad-accum", "0"], "--grad-accum"),
    (["encode", "--tokenizer", "t", "--out", "o", "--views", "mirror"], "--views"),
    (["encode", "--tokenizer", "t", "--out", "o", "--crop-range", "0.9"], "--crop-range"),
    (["encode", "--tokenizer", "t", "--out", "o", "--split", " "], "--split"),
    (["tokenizer", "train", "--out", "o", "--steps", "0"], "--steps"),
    (["tokenizer", "train", "--out", "o", "--resolution", "0"], "--resolution"),
    (["tokenizer", "import", "a", "b", "--weights", "best"], "--weights"),
    (["tokenizer", "import", "a", "b", "--preset", "vq32"], "--preset"),
    (["baseline", "import", "a", "b", "--tokenizer", "t", "--image-size", "0"], "--image-size"),
    (["cluster", "--tokenizer", "t", "--out", "o", "--k", "1"], "--k"),
    (["analyze", "redundancy", "--tokenizer", "t", "--out", "o", "--n", "0"], "--n"),
    (["eval", "s", "--ref-data", "[1]"], "--ref-data"),
    (["eval", "s", "--ref-data", "{bad"], "--ref-data"),
    (["eval", "s", "--k", "0"], "--k"),
    (["eval", "s", "--min-classifier-accuracy", "2"], "--min-classifier-accuracy"),
    (["classifier", "train", "--out", "o", "--epochs", "0"], "--epochs"),
    (["classifier", "train", "--out", "o", "--data", "csv"], "--data"),
    (["demo", "--inception", "maybe"], "--inception"),
    (["demo", "--steps", "0"], "--steps"),
    (["bench", "quality", "--ablate", "nope"], "--ablate"),
    (["bench", "quality", "--inception", "first"], "--inception"),
    (["bench", "speed", "--preset", "XXL"], "--preset"),
    (["bench", "speed", "--runs", "0"], "--runs"),
    (["bench", "train", "--k", "1"], "--k"),
    (["bench", "scaling", "--vocabs", "1024,x"], "--vocabs"),
    (["bench", "scaling", "--arms", "kmeans"], "--arms"),
    (["bench", "scaling", "--guidance", "0.5"], "--guidance"),
    (["bench", "scaling", "--inception", "last"], "--inception"),
    (["bench", "lasting", "--grids", "8,x"], "--grids"),
    (["bench", "lasting", "--presets", "tiny,huge"], "--presets"),
    (["bench", "lasting", "--arms", "learned,frequency"], "--arms"),
    (["bench", "lasting", "--wsd-decay", "1.5"], "--wsd-decay"),
    (["bench", "lasting", "--plan", "--report"], "--report"),
    (["eval-nll", "--codes", "c", "--max-images", "-1"], "--max-images"),
])
def test_bad_values_are_refused_at_parse_time_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "Traceback" not in err


def test_good_values_parse():
    a = build_parser().parse_args(["sample", "--classes", "0, 3,2", "--per-class", "1", "--top-p", "1",
                                   "--cfg", "1", "--device", "cuda:1"])
    assert a.classes == [0, 3, 2] and a.per_class == 1 and a.top_p == 1.0 and a.device == "cuda:1"
    assert build_parser().parse_args(["sample"]).classes == "all"
    b = build_parser().parse_args(["train", "baseline", "--codes", "c", "--out", "o", "--steps", "1", "--preset", "GPT-B",
                                   "--model-opt", "cls_rope=identity", "--model-opt", "token_dropout=0.2"])
    assert b.model_opt == [("cls_rope", "identity"), ("token_dropout", 0.2)] and b.lr is None


def test_train_lr_defaults_to_the_preset(monkeypatch):
    import ctfgen.train
    from ctfgen.train.config import LLAMAGEN_LR, SHORT_RUN_LR

    seen = {}

    def fake_train(cfg, **kw):
        seen[cfg.preset] = cfg.lr
        return ctfgen.train.TrainResult(out_dir=kw["out_dir"], step=0, total_steps=1, finished=True, resumed_from=0)

    monkeypatch.setattr(ctfgen.train, "train", fake_train)
    for preset in ("tiny", "B"):
        assert cli_main(["train", "baseline", "--codes", "c", "--out", "o", "--steps", "1", "--preset", preset]) == 0
    assert seen == {"tiny": SHORT_RUN_LR, "B": LLAMAGEN_LR} and SHORT_RUN_LR == 8e-3
    assert cli_main(["train", "baseline", "--codes", "c", "--out", "o", "--steps", "1", "--lr", "3e-4"]) == 0
    assert seen["tiny"] == 3e-4
    for length in ([], ["--steps", "0"]):  # neither --steps nor --epochs (0 is their default): argparse refuses it
        with pytest.raises(SystemExit) as e:
            cli_main(["train", "baseline", "--codes", "c", "--out", "o", *length])
        assert e.value.code == 2


def test_registries_beside_torch_code_are_read_not_copied(monkeypatch):
    """The registries whose users need torch (the speed bench's sizes, the classifier's accuracy
    threshold, stage 2's loss formulations) live in torch-free modules that the parser imports."""
    from ctfgen.apps.cli import eval as cli_eval
    from ctfgen.benchmarks import speed, speed_presets
    from ctfgen.evaluate import core
    from ctfgen.models.member_loss import IMPLS
    from ctfgen.train.config import AUX_LOSSES

    monkeypatch.setitem(speed_presets.PRESETS, "added", dict(speed.PRESETS["tiny"]))
    assert build_parser().parse_args(["bench", "speed", "--preset", "added"]).preset == "added"
    parsers = dict(_subparsers(build_parser()))
    assert parsers[("eval",)].get_default("min_classifier_accuracy") is core.MIN_CLASSIFIER_ACCURACY
    assert cli_eval.MIN_CLASSIFIER_ACCURACY is core.MIN_CLASSIFIER_ACCURACY
    assert AUX_LOSSES == ("auto",) + IMPLS


def test_the_tokenizer_checkpoints_as_the_model_trainer_does():
    # the tokenizer trains on the one Trainer, so --ckpt-every is RunOptions' setting, help and all
    # (0 = only at the end: train/trainer.py saves when the run is done or out of time)
    parsers = dict(_subparsers(build_parser()))
    tok, ar = (parsers[p]._option_string_actions["--ckpt-every"] for p in (("tokenizer", "train"), ("train", "ar")))
    assert tok.help == ar.help and "0 = only at the end" in tok.help
    assert tok.type("0") == 0 and tok.default is None


def test_registries_are_read_not_copied():
    """A method, preset or source added to its registry is offered by every flag that takes one."""
    from ctfgen.cluster import METHODS
    from ctfgen.data import SOURCES, VIEW_MODES
    from ctfgen.models import LLAMAGEN_NAMES
    from ctfgen.models import PRESETS as MODEL_PRESETS
    from ctfgen.tokenizer import PRESETS as VQ_PRESETS

    parsers = dict(_subparsers(build_parser()))
    def choices(path, flag):
        return set(parsers[path]._option_string_actions[flag].choices)

    assert choices(("cluster",), "--method") == choices(("demo",), "--cluster-method") == set(METHODS)
    assert choices(("analyze", "redundancy"), "--methods") == set(METHODS)
    assert choices(("bench", "train"), "--preset") == set(MODEL_PRESETS) | set(LLAMAGEN_NAMES)
    assert choices(("tokenizer", "train"), "--preset") >= set(VQ_PRESETS)
    assert choices(("encode",), "--views") == set(VIEW_MODES) and choices(("encode",), "--data") == set(SOURCES)
    # the demo's help names every clustering method (it named 4 of the 5 when it kept its own list)
    assert all(m in parsers[("demo",)]._option_string_actions["--cluster-method"].help for m in METHODS)


def test_train_commands_follow_the_kinds_table():
    # one subcommand per model kind, its flags decided by the kind's properties (models/config.py KINDS)
    from ctfgen.apps.cli import train as cli_train
    from ctfgen.models import KINDS

    parsers = dict(_subparsers(build_parser()))
    assert [p[1] for p in COMMANDS if p[0] == "train"] == sorted(KINDS) == ["ar", "aux", "baseline"]
    assert cli_train.KIND_HELP["baseline"].endswith("(no coarse map)")
    for kind, spec in KINDS.items():
        flags = {s for a in parsers[("train", kind)]._actions for s in a.option_strings}
        assert ("--coarse-map" in flags) == spec.needs_coarse_map == (kind != "baseline")
        assert ("--aux-loss" in flags) == ("--aux-coarse-noise" in flags) == spec.member_head == (kind == "aux")
        assert cli_train.KIND_HELP[kind] == spec.help and ("needs --coarse-map" in spec.help) == spec.needs_coarse_map


def test_help_json_friendly_classes_list():
    # the parsed value is what the sample command records in its manifest
    assert json.dumps(_util.class_list("4,0")) == "[4, 0]"


def test_every_command_takes_no_progress():
    runnable = [path for path in COMMANDS if dict(_subparsers(build_parser()))[path].get_default("func")]
    assert len(runnable) > 20
    for path in runnable:
        assert "--no-progress" in dict(_subparsers(build_parser()))[path]._option_string_actions, path


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_never_with_no_progress(tiny_data, tmp_path, capsys, monkeypatch):
    """Issue 22: bars flooded logs redirected to a file, and only train and sample could turn them off."""
    argv = ["classifier", "train", "--data", "npz", "--data-path", tiny_data.path, "--resolution", "16", "--channels", "1",
            "--epochs", "1", "--width", "4"]
    assert cli_main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert "%|" not in capsys.readouterr().err  # stderr is not a terminal here
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli_main(argv + ["--out", str(tmp_path / "b")]) == 0
    assert "classifier: 100%|" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    assert cli_main(argv + ["--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "%|" not in terminal.getvalue()
    monkeypatch.undo()


def test_train_help_says_steps_or_epochs_is_required(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "ar", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(--steps STEPS | --epochs EPOCHS)" in text and "required: one of --steps and --epochs" in text
    assert "(or --epochs), >= 0 (default: 0)" not in text
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "ar", "--codes", "c", "--out", "o"])
    assert e.value.code == 2 and "one of the arguments --steps --epochs is required" in capsys.readouterr().err
