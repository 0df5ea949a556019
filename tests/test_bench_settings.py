"""The benches' settings are declared once (benchmarks/settings.py, issue 21): each field of a bench's
config is its command's flag, with the option's help, bounds and choices, and the config's own check
refuses what the flag refuses."""
from __future__ import annotations

import dataclasses

import pytest

from ctfgen.apps.cli import build_parser
from ctfgen.benchmarks.settings import (AuxLossBenchConfig, GpuCheckConfig, QualitySpeedConfig, SpeedBenchConfig,
                                        SpeedSweepConfig, TrainBenchConfig)
from ctfgen.config import check_fields, item_list
from ctfgen.errors import CtfgenError

BENCHES = {"train": [TrainBenchConfig], "aux-loss": [AuxLossBenchConfig], "quality-speed": [QualitySpeedConfig],
           "gpu": [GpuCheckConfig], "speed": [SpeedBenchConfig, SpeedSweepConfig]}


def _bench_parser(name: str):
    bench = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "bench" in a.choices)
    group = bench.choices["bench"]
    return next(a for a in group._actions if hasattr(a, "choices") and a.choices and name in a.choices).choices[name]


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_every_setting_is_a_flag_made_from_its_option(name):
    parser = _bench_parser(name)
    actions = {a.dest: a for a in parser._actions}
    for cls in BENCHES[name]:
        for f in dataclasses.fields(cls):
            action = actions[f.name]
            assert f.metadata["help"] in action.help, (name, f.name)
            if "min" in f.metadata:  # the bound is checked when the flag is parsed
                with pytest.raises(SystemExit):
                    parser.parse_args([action.option_strings[0], str(f.metadata["min"] - 1)])
    # the description is the first paragraph of the settings' docstring (the help re-wraps it)
    assert parser.description.split() == BENCHES[name][0].__doc__.split("\n\n")[0].split()


def test_the_configs_check_what_the_flags_check():
    for cls in (TrainBenchConfig, AuxLossBenchConfig, QualitySpeedConfig, GpuCheckConfig, SpeedBenchConfig,
                SpeedSweepConfig):
        check_fields(cls())  # every default passes, an unset one (None) included
    with pytest.raises(CtfgenError, match=r"vocab must be in \[2, 65536\], got 1"):
        check_fields(AuxLossBenchConfig(vocab=1))
    with pytest.raises(CtfgenError, match="aux_preset must be one of"):
        check_fields(SpeedBenchConfig(aux_preset="huge"))
    with pytest.raises(CtfgenError, match="preset must be one of .*'fmnist'"):
        check_fields(SpeedBenchConfig(preset="huge"))
    with pytest.raises(CtfgenError, match="widths item must be one of"):
        check_fields(SpeedSweepConfig(widths="tiny,huge"))
    assert item_list(GpuCheckConfig(skip=" tests, smoke,"), "skip") == ["tests", "smoke"]
    assert item_list(SpeedSweepConfig(), "grids") == [8]


def test_speed_flags_keep_their_forms():
    """--compile alone means inductor; --preset and the sweep's flags stay unset unless given."""
    parser = _bench_parser("speed")
    args = parser.parse_args(["--compile"])
    assert args.compile == "inductor" and args.preset is None and args.widths is None
    assert parser.parse_args(["--compile", "cudagraph", "--preset", "B"]).compile == "cudagraph"
    for bad in (["--preset", "huge"], ["--widths", "tiny,huge"], ["--compile", "jit"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
