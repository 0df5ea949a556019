"""Class ids: how they are decided, checked, stated (printed) and recorded (`classes.json`).

A data set's class ids are 0..N-1. N and the name of each id are decided once per data set, over
all of its splits (idx and npz: the largest label of any split, plus one; image folders: the union
of the class folders of every split, in natural order). A class with no image in the split being
loaded (an empty class folder, labels 1..10 that leave class 0 empty, a stray label 1000) is
refused unless `DataConfig.allow_empty_classes` says it is meant.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping, Sequence

from ..errors import CtfgenError

if TYPE_CHECKING:
    import numpy as np

    from .dataset import ImageDataset

CLASSES_FILE = "classes.json"
ALLOW_HINT = "pass --allow-empty-classes (DataConfig.allow_empty_classes=True) to keep empty classes"
_DIGITS = re.compile(r"(\d+)")
_LIST_SKIPPED = 100  # skipped file names recorded per split
_PRINT_MAX = 12  # classes listed in the printed summary; classes.json has them all


def natural_key(name: str) -> tuple:
    """Sort key under which "2" < "10" and "img9" < "img10" (digit runs compare as numbers);
    names of equal-width numbers (ImageNet's n01440764, ...) keep their text order."""
    parts = _DIGITS.split(name)
    # re.split with a group puts text at even and digit runs at odd positions, so the tuple's
    # element types line up between any two names and never compare str with int.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def class_counts(ds: "ImageDataset", limit: int = 0) -> "np.ndarray":
    """(num_classes,) int64: images per class id in this split, or in its first `limit` images (0: all)."""
    import numpy as np

    labels = np.asarray(ds.labels, np.int64)
    return np.bincount(labels[:limit] if limit else labels, minlength=ds.num_classes)[: ds.num_classes]


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8" (shortened after a few runs)."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    return ", ".join(text[:6]) + (f" and {len(text) - 6} more runs" if len(text) > 6 else "")


def check_classes(ds: "ImageDataset", *, allow_empty: bool = False) -> None:
    """Refuse a split in which some class id has no image (unless `allow_empty`)."""
    counts = class_counts(ds)
    empty = [int(i) for i in (counts == 0).nonzero()[0]]
    if not empty or allow_empty:
        return
    where = f"{ds.path} (split {ds.split!r})"
    present = [int(i) for i in (counts > 0).nonzero()[0]]
    names = [repr(ds.class_names[i]) for i in empty[:3]]
    msg = (f"{where}: {len(empty)} of {ds.num_classes} class ids have no image: id(s) {_ranges(empty)} "
           f"(name(s) {', '.join(names)}{', ...' if len(empty) > 3 else ''})")
    if ds.source in ("npz", "idx", "fashion-mnist"):
        msg += (f"; this split's labels take {len(present)} distinct values in {_ranges(present)}, while "
                f"class ids run 0-{ds.num_classes - 1} (0 to the largest label of any split)")
        if empty == [0] and present and present[0] == 1:
            msg += "; the labels start at 1: subtract 1 so they run from 0"
        else:
            msg += "; relabel to 0..N-1"
    msg += f"; or {ALLOW_HINT}"
    raise CtfgenError(msg)


def class_table(names: Sequence[str], counts: Mapping[str, Sequence[int]], **about) -> dict:
    """JSON-ready statement of the classes: N, and per id its name and image count per split."""
    return {
        "num_classes": len(names),
        **about,
        "splits": list(counts),
        "classes": [{"id": i, "name": str(n), "count": {s: int(c[i]) for s, c in counts.items()}}
                    for i, n in enumerate(names)],
    }


def dataset_class_table(*splits: "ImageDataset", counts: Mapping[str, Sequence[int]] | None = None) -> dict:
    """`class_table` of one or more splits of one data set (`counts` overrides the split's counts,
    e.g. the images actually encoded)."""
    first = splits[0]
    if counts is None:
        counts = {ds.split: class_counts(ds).tolist() for ds in splits}
    about = {"source": first.source, "path": first.path}
    skipped = {ds.split: ds.skipped for ds in splits if getattr(ds, "skipped", 0)}
    if skipped:
        about["skipped_unreadable"] = skipped
        about["skipped_files"] = {ds.split: list(ds.skipped_files[:_LIST_SKIPPED]) for ds in splits if ds.skipped}
    return class_table(first.class_names, counts, **about)


def describe_classes(table: dict) -> str:
    """A few printable lines: the number of classes and the first ids with names and counts."""
    n = table["num_classes"]
    splits = table["splits"]
    rows = table["classes"]
    lines = [f"{n} classes (ids 0-{n - 1}) from {table.get('path', '?')}; images per split: "
             + ", ".join(f"{s} {sum(r['count'][s] for r in rows)}" for s in splits)]
    for r in rows[:_PRINT_MAX]:
        lines.append(f"  {r['id']:>4}  {r['name']!s:<24} " + "  ".join(f"{r['count'][s]:>7}" for s in splits))
    if n > _PRINT_MAX:
        lines.append(f"  ... {n - _PRINT_MAX} more in {CLASSES_FILE}")
    for split, k in table.get("skipped_unreadable", {}).items():
        first = table.get("skipped_files", {}).get(split, [])[:3]
        lines.append(f"  skipped {k} unreadable image file(s) in the {split} split (--skip-bad), e.g. "
                     + ", ".join(first))
    return "\n".join(lines)


def classes_json(table: dict) -> bytes:
    import json

    return (json.dumps(table, indent=1, ensure_ascii=False) + "\n").encode()


def read_class_names(path) -> list[str]:
    """The names, in id order, of a classes.json (`classes_json`) that a tokenizer, a code store or a
    classifier folder holds; CtfgenError naming the file when it is not one."""
    import json
    from pathlib import Path

    try:
        table = json.loads(Path(path).read_text())
        rows = table["classes"]
        names = {int(r["id"]): str(r["name"]) for r in rows}
        n = int(table["num_classes"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CtfgenError(f"{path}: not a readable {CLASSES_FILE} (expected num_classes and classes with id and "
                          f"name; {type(e).__name__}: {e})") from None
    if sorted(names) != list(range(n)):
        raise CtfgenError(f"{path}: its classes have ids {sorted(names)[:5]}..., expected 0..{n - 1}")
    return [names[i] for i in range(n)]
