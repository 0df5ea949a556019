"""Artifact folders: every stage writes one, and every stage checks what it reads.

An artifact is a directory holding its files plus `manifest.json`:

    {"kind": "tokenizer", "format": 1, "fingerprint": "…", "config": {...},
     "made_from": {"codes": "<fingerprint>", ...}, "info": {...}, "ctfgen_version": "…"}

`fingerprint` identifies the content (a hash of the tensors that define it), so a later stage can
record exactly what it was made from and refuse a mismatch. Folders are written to a temporary
sibling and renamed into place, so a crash never leaves a half-written artifact under the real name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .errors import ArtifactError

if TYPE_CHECKING:  # numpy and torch load lazily: the CLI imports this module to answer --help
    import numpy as np
    import torch

MANIFEST = "manifest.json"
FORMAT = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path} is not valid JSON: {e}") from None


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor | np.ndarray], extra: Any = None) -> str:
    """A short content hash: names, dtypes, shapes and bytes of every tensor (sorted by name)."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        arr = t.detach().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def artifact_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces `out_dir` in one rename.

    The caller must write the manifest (with `write_manifest`) inside the block.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"internal error: artifact {out} written without {MANIFEST}")
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(
    folder: str | os.PathLike,
    *,
    kind: str,
    fingerprint: str,
    config: Mapping[str, Any] | None = None,
    made_from: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict:
    from . import __version__

    manifest = {
        "kind": kind,
        "format": FORMAT,
        "fingerprint": fingerprint,
        "config": dict(config or {}),
        "made_from": dict(made_from or {}),
        "info": dict(info or {}),
        "ctfgen_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> dict:
    """Read and check an artifact's manifest; `kind` restricts what is accepted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}")
    m = read_json(folder / MANIFEST, what=f"manifest of {folder}")
    for key in ("kind", "format", "fingerprint"):
        if key not in m:
            raise ArtifactError(f"{folder / MANIFEST}: missing field '{key}'")
    if m["format"] != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST}: format {m['format']} is not supported (expected {FORMAT})")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and m["kind"] not in kinds:
        raise ArtifactError(f"{folder} is a '{m['kind']}' artifact, expected {' or '.join(kinds)}")
    return m


def check_made_from(what: str, expected: str, actual: str, *, hint: str = "") -> None:
    """Refuse to combine artifacts made from different parents (e.g. codes of another tokenizer)."""
    if expected != actual:
        msg = f"{what} mismatch: expected fingerprint {expected}, found {actual}"
        raise ArtifactError(msg + (f". {hint}" if hint else ""))


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Raise ArtifactError naming every missing, unexpected and mis-shaped key (a strict load that
    explains itself, instead of torch's wall of text)."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(want[k].shape)}"
              for k in sorted(set(want) & set(state)) if state[k].shape != want[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    if problems:
        raise ArtifactError(f"{where}: weights do not fit: " + "; ".join(problems))


def _short(items: list[str], n: int = 6) -> str:
    return str(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_foreign_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> Any:
    """torch.load a checkpoint of another project (LlamaGen's .pt files) without running its pickles.

    weights_only keeps arbitrary code out; the one extra type allowed is argparse.Namespace, the
    training arguments LlamaGen stores beside the weights.
    """
    import argparse
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ArtifactError(f"{path}: not loadable as a weights-only {what} ({e})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ArtifactError(f"{path}: cannot read as a torch {what} ({e})") from None
