"""Integrity of the files an artifact holds: each weights file's size and SHA-256, recorded in the
manifest when the artifact is written and checked when a file is loaded.

A fingerprint identifies *what* an artifact is; this checks that the bytes on disk are still the
bytes that were written (a copy cut short, a disk error, a file edited by hand). SHA-256 streams at
several hundred MB/s to a few GB/s, a second or so for a GPT-XL checkpoint; a file that passed once
is not hashed again in the same process unless it changed (size or modification time).

    CTFGEN_CHECK_FILES=hash   (default) record and check size and SHA-256
    CTFGEN_CHECK_FILES=size   sizes only: catches truncation, never reads a file to hash it (for speed)
    CTFGEN_CHECK_FILES=off    record nothing, check nothing

Folders written before these records existed (no "files" in the manifest) load unchecked.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import ArtifactError

ENV = "CTFGEN_CHECK_FILES"
MODES = ("hash", "size", "off")
CHECKED_SUFFIXES = (".safetensors", ".npy")  # weights, optimizer state, codes: what loading trusts
MANIFEST = "manifest.json"

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already checked


def check_mode() -> str:
    mode = os.environ.get(ENV, "hash").strip().lower() or "hash"
    if mode not in MODES:
        raise ArtifactError(f"{ENV}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def record_files(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every weights-like file under `folder`, leaving out
    sub-folders that are artifacts themselves (they carry their own manifest). The hash is left out
    with CTFGEN_CHECK_FILES=size, everything with =off."""
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    mode = check_mode()
    if mode == "off":
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not (here / d / MANIFEST).is_file())
        for name in sorted(filenames):
            if name.endswith(CHECKED_SUFFIXES):
                path = here / name
                st = path.stat()
                record: dict[str, Any] = {"bytes": st.st_size}
                if mode == "hash":
                    record["sha256"] = _verified[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = sha256_file(path)
                out[path.relative_to(folder).as_posix()] = record
    return out


def verify_file(folder: str | os.PathLike, manifest: Mapping[str, Any], name: str, *, redo: str = "") -> Path:
    """Check folder/name against its manifest record; returns the path.

    Raises ArtifactError naming the file when it is missing, of another size or another hash.
    `redo` says what to run to make the file again (e.g. "re-run `ctfgen encode`").
    """
    folder = Path(folder)
    path = folder / name
    if not path.is_file():
        raise ArtifactError(f"{path} not found: the artifact {folder} is incomplete" + (f"; {redo}" if redo else ""))
    record = (manifest.get("files") or {}).get(name)
    mode = check_mode()
    if record is None or mode == "off":
        return path  # written by an older ctfgen, or checking switched off
    st = path.stat()
    action = (f"{redo}, or copy the folder again from where it was made" if redo
              else "copy the folder again from where it was made, or re-run the command that wrote it")
    if st.st_size != record["bytes"]:
        raise ArtifactError(
            f"{path} is {st.st_size:,} bytes but {folder / MANIFEST} records {record['bytes']:,}: the file is "
            f"truncated or was changed after it was written; {action}")
    if mode == "size" or "sha256" not in record:
        return path
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256_file(path)
    if digest != record["sha256"]:
        raise ArtifactError(
            f"{path} does not match the file fingerprint (sha256) recorded in {folder / MANIFEST}: the file is "
            f"damaged or was changed after it was written; {action} (or set {ENV}=size to check sizes only)")
    _verified[key] = digest
    return path


def load_safetensors(folder: str | os.PathLike, manifest: Mapping[str, Any], name: str, *, redo: str = "",
                     device: str = "cpu") -> dict:
    """Verify folder/name, then read it; a damaged file is an ArtifactError naming it, never a raw
    safetensors traceback."""
    from safetensors.torch import load_file

    path = verify_file(folder, manifest, name, redo=redo)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError and OSError for damaged, truncated or unreadable files
        raise ArtifactError(f"cannot read {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                            "the file is damaged or not a safetensors file"
                            + (f"; {redo}" if redo else "")) from None


def check_finite(tensors: Mapping[str, Any], *, where: str) -> None:
    """Refuse weights holding NaN or infinity (e.g. a checkpoint of a diverged run) by name."""
    import torch

    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ArtifactError(f"{where}: weights hold NaN or infinite values ({bad[:3]}"
                            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                            + "); this is the checkpoint of a diverged run: retrain (e.g. with a lower --lr)")
