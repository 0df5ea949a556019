"""Typed dataclass configs that round-trip through JSON (and so travel inside artifacts)."""
from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any, TypeVar

from .errors import CtfgenError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A plain, JSON-ready dict of a (possibly nested) dataclass; tuples become lists."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict, *, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, refusing unknown fields and wrong types by name.

    `where` names the source (a file, a CLI flag) so the error tells the user what to fix.
    """
    if not isinstance(data, dict):
        raise CtfgenError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CtfgenError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise CtfgenError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CtfgenError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        seq = [_coerce(item, v, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise CtfgenError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise CtfgenError(f"{where}: expected int, got {value!r}")
    return value


def changed_settings(cfg: Any, saved: dict, *, ignore: frozenset[str] | set[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) for each top-level field of dataclass `cfg` that differs from
    the JSON `saved` by an earlier release or run. Fields that release did not have count as their
    default, so a folder made before a field was added still matches when the field is left at it."""
    import json

    try:
        saved = to_dict(from_dict(type(cfg), saved))
    except CtfgenError:
        pass  # a field that no longer exists: compared as it is, and reported
    old, now = json.loads(json.dumps(saved)), json.loads(json.dumps(to_dict(cfg)))
    return [(k, old.get(k), now.get(k)) for k in sorted(set(old) | set(now))
            if old.get(k) != now.get(k) and k not in ignore]


# ---------------------------------------------------------------- documented, checked fields

def option(default: Any, help: str, *, label: str | None = None, min: float | None = None, min_open: bool = False,
           max: float | None = None, max_open: bool = False, choices: tuple | None = None, note: str | None = None,
           hint: str | None = None, flag: str | None = None, flags: tuple[str, ...] = (),
           metavar: str | None = None, items: type | None = None, allow_empty: bool = False) -> Any:
    """A dataclass field that carries its documentation and allowed values, in one place for the
    config's own check (`field_problem`), the command line (apps/cli/_util.py `add_config_flags`: the
    flag, its help, its parse-time check) and forms (a page names the field by `label`).

    default: a dict or list default is copied for each instance (a default_factory);
    min/max: bounds (min_open/max_open: that bound itself is refused); a None value passes them,
    and the choices, when the default is None ("unset"); choices: the allowed values; note: what a special value
    means ("1 = off"), shown in the error; hint: what to do instead; flag: the option string
    instead of the one made from the name ("--warmup"); flags: further option strings beside it
    ("--cfg"); metavar: the name of the value in the help ("DECAY").
    A field typed as a list or tuple of values (tuple[int, ...]) takes them comma-separated on the command
    line, and min/max/choices bound each one.
    items: the field is a list of values of this type (int, float, str), kept as their comma-separated
    text (so the settings files and results that record it read as they always have; `item_list`
    gives the values); min/max/choices then bound each value, and allow_empty accepts no value.
    """
    meta = {"help": help, "label": label, "min": min, "min_open": min_open, "max": max, "max_open": max_open,
            "choices": choices, "note": note, "hint": hint, "flag": flag, "flags": tuple(flags), "metavar": metavar,
            "items": items, "allow_empty": allow_empty}
    # 0 is a bound, not an absence: keep every value but None, False and ()
    kept = {k: v for k, v in meta.items() if v is not None and v is not False and v != ()}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=kept)
    return dataclasses.field(default=default, metadata=kept)


def option_of(cls: type, name: str, default: Any, **changes: Any) -> Any:
    """Field `name` of dataclass `cls` again (its help, bounds, flag) with another default, and any
    `option` argument in `changes` ("help"): how a config that derives from another gives one of the
    shared settings its own default without declaring it twice."""
    meta = {**{f.name: f for f in dataclasses.fields(cls)}[name].metadata, **changes}
    return option(default, **meta)


def bound_text(meta: typing.Mapping) -> str:
    """'>= 1', '> 0', 'in (0, 1]', 'in [0, 1)' from an `option`'s bounds ('' when it has none)."""
    lo, hi = meta.get("min"), meta.get("max")
    lo_open, hi_open = meta.get("min_open", False), meta.get("max_open", False)
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_number(lo)}, {_number(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_number(lo)}"
    return f"{'<' if hi_open else '<='} {_number(hi)}" if hi is not None else ""


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"  # an int bound exactly, however large


def item_list(cfg: Any, name: str) -> list:
    """The values of field `name` of dataclass `cfg`, declared `option(..., items=T)`: its comma-separated
    text split and read as T; CtfgenError naming the field when an item is not a T."""
    f = {f.name: f for f in dataclasses.fields(cfg)}[name]
    return _items(f, getattr(cfg, name))


def _items(f: dataclasses.Field, text: Any) -> list:
    kind = f.metadata["items"]
    if not isinstance(text, str):
        raise CtfgenError(f"{f.name}: expected comma-separated {kind.__name__} values as text, got {text!r}")
    out = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        try:
            out.append(kind(part))
        except ValueError:
            what = {int: "integers", float: "numbers"}.get(kind, kind.__name__)
            raise CtfgenError(f"{f.name}: expected comma-separated {what}, got {text!r}") from None
    return out


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for field `f` by the rules its `option` gave, as the end of a
    sentence that begins with the field's name ("must be > 0, got 0"), or None. A list field
    (`items`) is checked item by item."""
    meta = f.metadata
    if meta.get("items"):
        try:
            values = _items(f, value)
        except CtfgenError as e:
            return str(e).removeprefix(f"{f.name}: ")
        if not values and not meta.get("allow_empty"):
            return "needs at least one value"
        return _item_problem(meta, values)
    if isinstance(value, (list, tuple)) and ("min" in meta or "max" in meta or "choices" in meta):
        return _item_problem(meta, value)  # a typed list field (tuple[int, ...]): its rules bound each item
    unset = value is None and f.default is None  # "unset" passes the choices and bounds
    if meta.get("choices") is not None and value not in meta["choices"] and not unset:
        return f"must be one of {tuple(meta['choices'])}, got {value!r}"
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is None and hi is None) or unset:
        return None
    ok = value == value  # NaN fails every bound
    ok &= lo is None or (value > lo if meta.get("min_open") else value >= lo)
    ok &= hi is None or (value < hi if meta.get("max_open") else value <= hi)
    if ok:
        return None
    note = f" ({meta['note']})" if meta.get("note") else ""
    hint = f"; {meta['hint']}" if meta.get("hint") else ""
    return f"must be {bound_text(meta)}{note}, got {_number(value)}{hint}"


def _item_problem(meta: typing.Mapping, values: typing.Iterable) -> str | None:
    single = dataclasses.field(metadata={k: v for k, v in meta.items() if k != "items"})
    return next((f"item {problem}" for v in values if (problem := field_problem(single, v))), None)


def check_fields(cfg: Any, *, where: str | None = None) -> Any:
    """Raise CtfgenError naming the first field of dataclass `cfg` that breaks its `option`'s rules
    ("where: field must be ..." when `where` names the config)."""
    for f in dataclasses.fields(cfg):
        if f.metadata.get("items"):
            try:
                _items(f, getattr(cfg, f.name))
            except CtfgenError as e:
                raise CtfgenError(f"{where + ': ' if where else ''}{e}") from None
        problem = field_problem(f, getattr(cfg, f.name))
        if problem:
            raise CtfgenError(f"{where + ': ' if where else ''}{f.name} {problem}")
    return cfg


def check_class_ids(labels: Any, num_classes: int, *, where: str) -> None:
    """Refuse class ids outside [0, num_classes) (a sequence, numpy array or tensor of integers):
    a CtfgenError naming `where` (the file or argument they came from), the first offending value
    and its position, and, when the ids reach num_classes, the hint for labels counted from 1. The
    id num_classes itself would otherwise pass the embedding silently: it is the guidance null class."""
    import numpy as np

    if hasattr(labels, "detach"):  # a torch tensor, on any device
        labels = labels.detach().cpu().numpy()
    ids = np.asarray(labels).reshape(-1)
    if ids.size == 0:
        return
    if ids.dtype.kind not in "iu":
        raise CtfgenError(f"{where}: class ids must be integers, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= num_classes)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    hint = "; labels run 1..N? subtract 1" if bool((ids == num_classes).any()) and int(ids.min()) >= 1 else ""
    raise CtfgenError(f"{where}: class id {int(ids[first])} at position {first} is outside [0, {num_classes}) "
                      f"({int(bad.sum())} of {ids.size} ids are; there are {num_classes} classes, 0..{num_classes - 1})"
                      f"{hint}")
