"""Reading LlamaGen's checkpoint files (GPT and VQ): containers, wrapper prefixes, recorded args.

LlamaGen's training scripts save `{"model": sd, "optimizer", "steps", "args"[, "ema": sd]}`
(argparse.Namespace args); other copies of its weights arrive as {"module": sd}, {"state_dict": sd},
a bare state dict (FSDP's consolidated.pth) or a .safetensors file, and weights saved through
DistributedDataParallel or torch.compile carry `module.` / `_orig_mod.` key prefixes. Everything
here is read with the weights-only unpickler (`artifacts.load_foreign_checkpoint`).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import load_foreign_checkpoint
from .errors import ArtifactError, CtfgenError

CONTAINERS = ("ema", "model", "module", "state_dict")
WEIGHTS_CHOICES = ("auto", "model", "ema")
# prefix -> what adds it; removed wherever a key starts with it, repeatedly (DDP over a compiled
# model gives "module._orig_mod.")
WRAPPER_PREFIXES = {"module.": "DistributedDataParallel", "_orig_mod.": "torch.compile"}


@dataclass
class ForeignWeights:
    path: Path
    state: dict[str, torch.Tensor]
    container: str  # which entry the weights came from ("ema", "model", ...) or "bare"
    args: dict[str, Any] = field(default_factory=dict)  # the training args the file records ({} if none)
    notes: list[str] = field(default_factory=list)  # what was done to the file's contents, for the user


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _pick(obj: dict, weights: str, path: Path, what: str) -> tuple[dict, str]:
    if weights not in WEIGHTS_CHOICES:
        raise CtfgenError(f"weights={weights!r}: expected one of {WEIGHTS_CHOICES}")
    if _is_state_dict(obj):
        if weights == "ema":
            raise ArtifactError(f"{path}: a bare state dict has no 'ema' weights; use weights 'model' or 'auto'")
        return obj, "bare"
    found = [k for k in CONTAINERS if isinstance(obj.get(k), dict)]
    order = {"ema": ("ema",), "model": ("model", "module", "state_dict"), "auto": CONTAINERS}[weights]
    for key in order:
        if key in found:
            return obj[key], key
    keys = sorted(map(str, obj))[:10]
    if weights == "ema":
        raise ArtifactError(f"{path}: no 'ema' weights in this {what} (it holds {keys}); use weights 'model'")
    if found == ["ema"]:
        raise ArtifactError(f"{path}: this {what} holds only 'ema' weights; use weights 'ema' (or 'auto')")
    raise ArtifactError(f"{path}: no weights found in this {what}: expected a state dict or one of the entries "
                        f"{list(CONTAINERS)}, found {keys}")


def strip_wrappers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove DDP / torch.compile key prefixes; returns the new state dict and one note per prefix."""
    counts = dict.fromkeys(WRAPPER_PREFIXES, 0)
    out = {}
    for key, value in state.items():
        name = key
        while True:
            prefix = next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None)
            if prefix is None:
                break
            name = name[len(prefix):]
            counts[prefix] += 1
        if name in out:
            raise ArtifactError(f"two keys become {name!r} once the wrapper prefixes are removed")
        out[name] = value
    notes = [f"removed the key prefix {p!r} (added by {WRAPPER_PREFIXES[p]}) from {n} of {len(state)} keys"
             for p, n in counts.items() if n]
    return out, notes


def recorded_args(obj: Any) -> dict[str, Any]:
    """The training arguments a LlamaGen checkpoint stores beside its weights, as a plain dict."""
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return {}
    # JSON-ready copies only (they are recorded in the manifest)
    return {str(k): v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}


def read_llamagen_file(path: str | Path, *, weights: str = "model", what: str = "LlamaGen checkpoint") -> ForeignWeights:
    """The weights (chosen by `weights`: "model", "ema" or "auto" = ema if present) of a LlamaGen
    file, with wrapper prefixes removed, plus the args it records."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ArtifactError(f"{path}: cannot read as safetensors ({e})") from None
    else:
        obj = load_foreign_checkpoint(path, what=what)
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a dict (state dict or checkpoint), got {type(obj).__name__}")
    sd, container = _pick(obj, weights, path, what)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ArtifactError(f"{path}: the '{container}' entry is not a state dict (non-tensor entries {bad[:5]})")
    sd, notes = strip_wrappers(sd)
    notes.insert(0, f"weights: the '{container}' entry" if container != "bare" else "weights: a bare state dict")
    return ForeignWeights(path, sd, container, recorded_args(obj), notes)


def size_from_name(path: Path, pattern: str) -> int | None:
    """A number the released file names carry (c2i_L_384.pt -> 384, vq_ds8_c2i.pt -> 8), or None."""
    m = re.search(pattern, path.name)
    return int(m.group(1)) if m else None
