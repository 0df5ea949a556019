"""A training run's resumable state in safetensors + JSON, for the one Trainer (train/) and its tasks,
the models' and the tokenizer's: optimizer state dicts split into tensors and JSON, every RNG of a
process, the default checkpoint cadence, the cosine schedule's progress, and the comparison that
names the setting a resume would change. Nothing here is pickled. torch and numpy load on first
use: the command line reads the cadence at parse time.
"""
from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

STATE_DIR = "training_state"  # inside a run folder: what resuming needs, and inference never reads
STATE_JSON = "state.json"  # step, data position, optimizer hyper-parameters, RNG metadata
OPTIMIZER_FILE = "optimizer.safetensors"  # the optimizer's tensors (optimizer_to_tensors)


def cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies on the CPU, contiguous, ready for safetensors."""
    # clone: safetensors refuses tensors sharing storage (tied weights) and non-contiguous views
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def optimizer_to_tensors(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON-able metadata."""
    import torch

    keys = list(sd["state"].keys())
    tensors, scalars = {}, {}
    for i, key in enumerate(keys):
        for name, value in sd["state"][key].items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{i}.{name}"] = value
            else:
                scalars[f"{i}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return cpu_tensors(tensors), {"keys": keys, "scalars": scalars, "param_groups": groups}


def optimizer_from_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[Any, dict[str, Any]] = {key: {} for key in meta["keys"]}
    keys = meta["keys"]
    for name, value in tensors.items():
        _, i, field = name.split(".", 2)
        state[keys[int(i)]][field] = value
    for name, value in meta["scalars"].items():
        i, field = name.split(".", 1)
        state[keys[int(i)]][field] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng(device: torch.device | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states (torch CPU, CUDA, numpy, python) as tensors + JSON."""
    import numpy as np
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    py_version, py_internal, py_gauss = random.getstate()
    tensors["python"] = torch.tensor(py_internal, dtype=torch.int64)
    meta = {"numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
            "python": [py_version, py_gauss]}
    return tensors, meta


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators from one integer (numpy takes it modulo
    2**32, its seed range), the start of every training run (models and tokenizer)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Set this process's RNGs to what `capture_rng` recorded."""
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    if device is not None and device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    np_kind, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_kind, tensors["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_gauss = meta["python"]
    random.setstate((py_version, tuple(int(x) for x in tensors["python"].tolist()), py_gauss))


def first_difference(expected: Any, found: Any, path: str = "") -> str | None:
    """The dotted name of the first field where two JSON-like values differ, or None."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in list(expected) + [k for k in found if k not in expected]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in expected or key not in found:
                return sub
            diff = first_difference(expected[key], found[key], sub)
            if diff:
                return diff
        return None
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        if len(expected) == len(found) and all(first_difference(a, b) is None for a, b in zip(expected, found)):
            return None
        return path
    return None if expected == found else path


def auto_ckpt_every(total_steps: int) -> int:
    """Default checkpoint cadence: ten checkpoints over the run, at most 1000 steps apart, so a short
    run that is killed still has something to resume from and a long one does not write too often."""
    return max(1, min(1000, math.ceil(total_steps / 10)))


def cosine_progress(step: int, warmup_steps: int, total: int) -> float:
    """How far step `step` (0-based) is through a cosine decay that starts after `warmup_steps` and
    ends at the run's last step, total - 1: 0 at the first decay step, 1 at the last (and after).
    A decay of a single step stays at 0 (the peak), so that step is not lost to a floor of 0. Shared
    by the models' schedule (train/config.py) and the tokenizer's (tokenizer/train.py)."""
    span = total - 1 - warmup_steps
    if span <= 0:
        return 0.0 if step - warmup_steps <= 0 else 1.0
    return min(1.0, max(0.0, (step - warmup_steps) / span))
