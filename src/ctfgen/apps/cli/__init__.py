"""`ctfgen` command line: one sub-command module per pipeline stage, found automatically.

Each module in this package defines `ORDER` (its place in `--help`, following the pipeline) and
`register(subparsers)`, which adds its sub-command(s) with `set_defaults(func=...)`. Registering
imports nothing heavy (torch, numpy, ...): those load inside `func`, so `--help` and bad options
answer at once; every option is checked as it is parsed (see `_util`).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys

from ...errors import CtfgenError
from ._util import apply_help_formatters

PIPELINE = """pipeline:
  data -> tokenizer -> codes on disk -> coarse labels -> stage 1 / stage 2 (and baseline)
  -> sampler -> evaluation.  Every step writes a folder with a manifest.json that records
  what it was made from; later steps refuse folders made from something else."""


def build_parser() -> argparse.ArgumentParser:
    from ... import __version__

    parser = argparse.ArgumentParser(
        prog="ctfgen",
        description="Coarse-to-fine token prediction (CTF) for autoregressive image generation.",
        epilog=PIPELINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ctfgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            modules.append(importlib.import_module(f"{__name__}.{info.name}"))
    for mod in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        mod.register(sub)
    add_progress_flags(parser)
    apply_help_formatters(parser)
    return parser


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """--no-progress on every command that runs something (those that had it keep their own help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in set(action.choices.values()):
                if p.get_default("func") and "--no-progress" not in p._option_string_actions:
                    p.add_argument("--no-progress", action="store_true",
                                   help="no progress bars (they are only drawn when stderr is a terminal anyway)")
                add_progress_flags(p)


# Spellings of a command that argparse cannot express as sub-commands: `ctfgen eval` takes a samples
# path, so `ctfgen eval nll` is the command "eval-nll".
ALIASES = {("eval", "nll"): "eval-nll"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = shlex.join(["ctfgen", *argv])  # what results record as the command that made them
    for words, command in ALIASES.items():
        if tuple(argv[:len(words)]) == words:
            argv = [command, *argv[len(words):]]
    args = parser.parse_args(argv)
    args.command_line = typed
    if not getattr(args, "func", None):
        # A group command given without its sub-command: show that group's help.
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    from ...progress import set_progress

    set_progress(not (getattr(args, "no_progress", False) or getattr(args, "quiet", False)))
    try:
        return args.func(args) or 0
    except CtfgenError as e:
        print(f"ctfgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from ...artifacts import disk_full_error, is_disk_full

        if not is_disk_full(e):
            raise
        # a write outside an artifact folder (a live log, a cache); artifact writes say so themselves
        where = e.filename or getattr(args, "out", None) or "."
        print(f"ctfgen {args.command}: error: {disk_full_error(where)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
