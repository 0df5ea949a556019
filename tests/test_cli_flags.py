"""Every command keeps its flags and their defaults (issue 21: the settings flags are now made from
the config dataclasses' `option` fields, so this pins that the generated parsers equal the
hand-written ones they replaced). The fixtures were first produced from the parsers and configs before
that change; both are guards against an accidental change. A deliberate one (a new setting, so a new
flag and a new key in a settings file) rewrites both with
`PYTHONPATH=src python tests/test_cli_flags.py --write`; review their diff (only additions) before
committing it. Without --write the flag table is printed."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "cli_flags.json"


def _shown(value):
    """A default as text the command line takes: a list as its comma-joined items (a typed list
    field and the comma string it replaced show the same)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def flag_table(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict:
    """{"command words": {"--flag[/--alias]": {"dest", "default", "switch", "choices", "nargs"}}} of
    every command and command group below `parser`."""
    table, flags = {}, {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                table.update(flag_table(sub, (*path, name)))
            continue
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        flags["/".join(action.option_strings)] = {
            "dest": action.dest, "default": _shown(action.default), "switch": action.nargs == 0,
            "choices": None if action.choices is None else [_shown(c) for c in action.choices],
            "nargs": action.nargs}
    table[" ".join(path) or "ctfgen"] = flags
    return table


def _current() -> dict:
    from ctfgen.apps.cli import build_parser

    return json.loads(json.dumps(flag_table(build_parser())))


def test_every_command_keeps_its_flags_and_defaults():
    before, now = json.loads(FIXTURE.read_text()), _current()
    assert sorted(now) == sorted(before)
    for command, flags in before.items():
        # aliases may be added: each flag of before is one of the option strings of a flag now
        spelled = {s: (key, entry) for key, entry in now[command].items() for s in key.split("/")}
        for key, entry in flags.items():
            for s in key.split("/"):
                assert s in spelled, f"{command}: {s} is gone"
                assert spelled[s][1] == entry, f"{command} {s}: {entry} before, {spelled[s][1]} now"
        gone_or_new = {s for key in now[command] for s in key.split("/")} - {s for key in flags for s in key.split("/")}
        # a new option string may only be an alias of a flag that was there
        assert all(any(o in {s for k in flags for s in k.split("/")} for o in spelled[s][0].split("/"))
                   for s in gone_or_new), f"{command}: new flags {sorted(gone_or_new)}"


SETTINGS = Path(__file__).parent / "fixtures" / "settings_defaults.json"


def _as_text(table: dict) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def _settings() -> dict:
    """{config class name: its defaults as a settings file records them} of the configs whose files are kept."""
    from ctfgen.config import to_dict
    from ctfgen.experiments.demo import DemoConfig
    from ctfgen.experiments.quality import QualityConfig
    from ctfgen.experiments.scaling import ScalingConfig
    from ctfgen.experiments.scaling.lasting import LastingConfig
    from ctfgen.tokenizer.config import TokenizerTrainConfig
    from ctfgen.train.config import RunOptions, TrainConfig

    return {c.__name__: to_dict(c()) for c in (DemoConfig, QualityConfig, ScalingConfig, LastingConfig, TrainConfig,
                                              RunOptions, TokenizerTrainConfig)}


def test_settings_files_keep_their_form():
    """The settings an experiment records (demo_config.json, ...) and the configs in manifests read
    as before the settings were declared with `option` (fixture made from the configs of then), so
    folders made before are reused and keep their fingerprints."""
    assert json.loads(json.dumps(_settings())) == json.loads(SETTINGS.read_text())


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        FIXTURE.write_text(_as_text(_current()))
        SETTINGS.write_text(_as_text(_settings()))
        print(f"wrote {FIXTURE} and {SETTINGS}")
    else:
        sys.stdout.write(_as_text(_current()))
