"""Helpers shared by the sub-command modules: value checks, help formatting, common options.

Every option is checked when the command line is parsed (argparse `type=` and `choices=`), so a
bad value gets argparse's one-line error naming the option before anything heavy is imported.
The command modules import torch, numpy and the rest inside their `func` only: `ctfgen X --help`
and a bad option answer at once.
"""
from __future__ import annotations

import argparse
import functools
import math
import re

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# ---------------------------------------------------------------- value checks (argparse `type=`)

def int_range(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (either bound optional)."""
    want = ("an integer" + (f" >= {lo}" if lo is not None else "") + (" and" if lo is not None and hi is not None else "")
            + (f" <= {hi}" if hi is not None else ""))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    parse.__name__ = want
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number in the interval lo..hi (each end closed unless *_open)."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    want = "a number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        bad = not math.isfinite(value)
        bad |= lo is not None and (value <= lo if lo_open else value < lo)
        bad |= hi is not None and (value >= hi if hi_open else value > hi)
        if bad:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    parse.__name__ = want
    return parse


positive_int = int_range(1)
nonneg_int = int_range(0)
seed_int = int_range(0, 2**63 - 1)
positive_float = float_range(0.0, lo_open=True)
probability = float_range(0.0, 1.0)


def comma_list(item, *, allow_empty: bool = False):
    """An argparse type: comma-separated values, each checked by `item` (another such type); the
    text is kept as given (the configs store it as text)."""
    def parse(text: str) -> str:
        parts = [t.strip() for t in text.split(",") if t.strip()]
        if not parts and not allow_empty:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got an empty one")
        for part in parts:
            try:
                item(part)
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"{e} in {text!r}") from None
        return text

    return parse


def typed_list(item, kind=tuple):
    """An argparse type: comma-separated values, each read and checked by `item`, as a `kind` (tuple or list)."""
    check = comma_list(item)

    def parse(text: str):
        check(text)
        return kind(item(t.strip()) for t in text.split(",") if t.strip())

    return parse


def one_of(*choices: str):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def boolean(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty value")
    return text


def device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N, mps or auto, got {text!r}")
    return text


def background_colour(text: str) -> str:
    """white, black or R,G,B (each 0..255); kept as text (DataConfig.background)."""
    from ...data import parse_background
    from ...errors import CtfgenError

    try:
        parse_background(text)
    except CtfgenError:
        raise argparse.ArgumentTypeError(f"expected white, black or R,G,B with each 0..255, got {text!r}") from None
    return text


def class_list(text: str) -> list[int] | str:
    """'all', or comma-separated distinct class ids >= 0 (at least one)."""
    if text.strip() == "all":
        return "all"
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError("expected 'all' or comma-separated class ids, got an empty list")
    ids = []
    for t in items:
        if not t.isdigit():
            where = f" in {text!r}" if len(items) > 1 else ""
            raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated class ids >= 0, got {t!r}{where}")
        ids.append(int(t))
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"class id(s) {dup} given twice in {text!r}")
    return ids


# ---------------------------------------------------------------- help: every default shown

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option whose help does not already state its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        value = action.default
        if value is None or value == "" or value == []:
            shown = "none"
        elif isinstance(value, (list, tuple)):
            shown = " ".join(map(str, value))
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter that keeps the description's and epilog's line breaks."""


def apply_help_formatters(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every sub-command parser below it a formatter that shows the defaults."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = RawHelpFormatter if raw else HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                apply_help_formatters(sub)


# ---------------------------------------------------------------- common options

def add_group(sub, name: str, help: str, description: str | None = None):
    """A command with its own sub-commands (`ctfgen tokenizer train`): returns their subparsers."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.set_defaults(_group_parser=p)
    return p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")


def add_command(group, name: str, run, *, help: str, description: str | None = None, data: bool = False,
                device: bool = False, **parser_options) -> argparse.ArgumentParser:
    """A (sub-)command that `run(args)` carries out; data=True / device=True give it the data flags
    (add_data_args) and the device flags (add_device_args); `parser_options` go to add_parser (epilog,
    formatter_class). Returns its parser for the other flags."""
    p = group.add_parser(name, help=help, description=description, **parser_options)
    if data:
        add_data_args(p)
    if device:
        add_device_args(p)
    p.set_defaults(func=run)
    return p


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=device, help="cpu, cuda, cuda:N or auto (cuda if available)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads for torch (0: torch's default)")


def setup_device(args) -> "torch.device":  # noqa: F821
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    from ...dist import resolve_device

    return resolve_device(args.device)


def add_data_args(p: argparse.ArgumentParser, *, sized: bool = True, size_default: str = "the tokenizer's") -> None:
    """--data, --data-path, [--resolution, --channels,] --skip-bad, --allow-empty-classes."""
    from ...data import FASHION_MNIST_DIR, DataConfig

    g = p.add_argument_group("data (docs/DATA.md)")
    sizes = ("resolution", "channels") if sized else ()
    add_config_flags(g, DataConfig, only=("source", "path"), dests={"source": "data", "path": "data_path"}, shown={
        "source": "the embedded Fashion-MNIST", "path": f"none; fashion-mnist: {FASHION_MNIST_DIR}"})
    if sized:
        add_config_flags(g, DataConfig, only=sizes, unset=True, shown=dict.fromkeys(sizes, size_default))
    add_config_flags(g, DataConfig, only=("skip_bad", "allow_empty_classes"), switches=True)
    add_background_arg(g)


def set_option_help(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    """Replace the help of one option that a shared helper (add_data_args) added."""
    p._option_string_actions[flag].help = text


def add_background_arg(p) -> None:
    from ...data import DataConfig

    add_config_flags(p, DataConfig, only=("background",), types={"background": background_colour})


def data_config(args, *, default_resolution: int = 32, default_channels: int = 1):
    from ...data import DataConfig

    return DataConfig(source=args.data, path=args.data_path,
                      resolution=getattr(args, "resolution", None) or default_resolution,
                      channels=getattr(args, "channels", None) or default_channels, skip_bad=args.skip_bad,
                      allow_empty_classes=args.allow_empty_classes, background=args.background)


def add_config_flags(p, cls, helps: dict[str, str] | None = None, *, skip: tuple[str, ...] = ("data",),
                     only: tuple[str, ...] | None = None, types: dict | None = None, choices: dict | None = None,
                     names: dict[str, tuple[str, ...]] | None = None, metavars: dict[str, str] | None = None,
                     switches: bool = False, unset: bool = False, shown: dict[str, str] | None = None,
                     dests: dict[str, str] | None = None, bare: dict | None = None) -> None:
    """One --flag per field of the dataclass `cls` (its defaults, read from the class: nothing is built).

    p: a parser or argument group; only: these fields, in this order (else every field not in skip).
    Everything below comes from the field's `option` (config.py) unless an argument gives it by field
    name. Help: `helps[name]`, else the option's help, with its bounds and note, then "(default: X)"
    unless the help states its default. Parse-time check: `types[name]`, else the option's bounds
    (each item's, for a list field: comma-separated text), else the type of the default; allowed
    values: `choices`, else the option's. names: option strings (else the option's `flag` or --field-name, and its
    `flags`); metavars: the value's name in the help (else the option's `metavar`); switches: bool
    fields become store_true flags (else --flag BOOL); unset: every flag defaults to None, so that
    only the flags given override (the help still shows the class's default, or `shown[name]`);
    dests: the attribute of the parsed flags (else the field's name); bare: the value of a flag given
    without one (`--compile` alone: `bare={"compile": "inductor"}`). `choices={name: None}` checks the
    option's choices in the flag's type instead of argparse's (no {a,b,...} in the usage).
    """
    from dataclasses import fields

    by_name = {f.name: f for f in fields(cls)}
    for name in only or [n for n in by_name if n not in skip]:
        f = by_name[name]
        meta = f.metadata
        value = _field_default(f)
        flags = (names or {}).get(name) or (meta.get("flag") or "--" + name.replace("_", "-"), *meta.get("flags", ()))
        text = (helps or {}).get(name) or meta.get("help", "")
        if "min" in meta or "max" in meta:
            from ...config import bound_text

            head, sep, tail = text.partition(" (default")  # the bounds go before a stated default
            text = f"{head}, {bound_text(meta)}" + (f" ({meta['note']})" if meta.get("note") else "") + sep + tail
        if "(default" not in text:
            switch = isinstance(value, bool) and (switches or unset)
            default_text = (shown or {}).get(name) or (("on" if value else "off") if switch else _shown(value))
            text = f"{text} (default: {default_text})"
        kw = {"dest": (dests or {}).get(name, name), "help": text, "default": None if unset else value}
        metavar = (metavars or {}).get(name) or meta.get("metavar")
        if metavar:
            kw["metavar"] = metavar
        if isinstance(value, bool):
            if switches or unset:
                p.add_argument(*flags, action="store_true", **kw)
            else:
                p.add_argument(*flags, type=boolean, **{"metavar": "BOOL", **kw})
            continue
        if meta.get("items"):  # comma-separated values, each checked by the option's rules
            item = one_of(*meta["choices"]) if meta.get("choices") else _bounded_type(cls, f) or meta["items"]
            p.add_argument(*flags, type=(types or {}).get(name) or comma_list(item, allow_empty=meta.get("allow_empty", False)), **kw)
            continue
        seq = _sequence_type(cls, f)
        if seq is not None:  # a typed list field: comma-separated values, each checked by the option's rules
            item = one_of(*meta["choices"]) if meta.get("choices") else _bounded_type(cls, f) or seq[1]
            p.add_argument(*flags, type=(types or {}).get(name) or typed_list(item, seq[0]), **kw)
            continue
        if name in (bare or {}):
            kw.update(nargs="?", const=bare[name])
        allowed = (choices or {}).get(name, meta.get("choices"))
        if allowed is not None:
            kw["choices"] = allowed
        elif meta.get("choices"):
            types = {name: one_of(*meta["choices"]), **(types or {})}
        check = (types or {}).get(name) or _bounded_type(cls, f) or _plain_type(cls, f)
        p.add_argument(*flags, type=check, **kw)


def _field_default(f):
    from dataclasses import MISSING

    return f.default_factory() if f.default is MISSING else f.default


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"  # as the flag takes it
    return "none" if value is None or value == "" else str(value)


@functools.cache
def _type_hints(cls) -> dict:
    """A config class's resolved field types, once per class: every parser build (`--help` too)
    asks for them field by field."""
    import typing

    return typing.get_type_hints(cls)


def _plain_type(cls, f):
    """The type a flag's text is read as: the field's (X of `X | None`)."""
    import typing

    hint = _type_hints(cls)[f.name]
    plain = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return plain[0] if plain[0] in (int, float, str) else type(_field_default(f))


def _sequence_type(cls, f):
    """(tuple or list, item type) of a field typed tuple[T, ...] or list[T], else None."""
    import typing

    hint = _type_hints(cls)[f.name]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    return (origin, args[0]) if origin in (tuple, list) and args else None


def _bounded_type(cls, f):
    """The argparse type of the bounds of field `f`'s `option` (config.py), an integer or a number
    as the field's type says (int, float, int | None), or None when it has none."""
    import typing

    meta = f.metadata
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return None
    hint = meta.get("items") or _type_hints(cls)[f.name]
    if typing.get_origin(hint) in (tuple, list):
        hint = typing.get_args(hint)[0]
    if int in (typing.get_args(hint) or (hint,)):
        return int_range(None if lo is None else int(lo) + bool(meta.get("min_open")),
                         None if hi is None else int(hi) - bool(meta.get("max_open")))
    return float_range(lo, hi, lo_open=bool(meta.get("min_open")), hi_open=bool(meta.get("max_open")))


def config_from_args(cls, args, *, skip: tuple[str, ...] = ("data",), **extra):
    """`cls` from the parsed flags of its fields (fields without a flag keep their default), `extra` on top."""
    from dataclasses import fields

    given = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip and hasattr(args, f.name)}
    return cls(**{**given, **extra})


def given_flags(cls, args, *, only: tuple[str, ...] | None = None) -> dict:
    """The fields of `cls` (`only` these) whose flag was given (flags made with unset=True): overrides of
    another default."""
    from dataclasses import fields

    return {f.name: getattr(args, f.name) for f in fields(cls)
            if (only is None or f.name in only) and getattr(args, f.name, None) is not None}
