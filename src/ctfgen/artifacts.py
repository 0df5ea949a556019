"""Artifact folders: every stage writes one, and every stage checks what it reads.

An artifact is a directory holding its files plus `manifest.json`:

    {"kind": "tokenizer", "format": 1, "fingerprint": "…", "config": {...},
     "made_from": {"codes": "<fingerprint>", ...}, "info": {...}, "ctfgen_version": "…",
     "files": {"model.safetensors": {"bytes": …, "sha256": "…"}}}

`fingerprint` identifies the content (a hash of the tensors that define it), so a later stage can
record exactly what it was made from and refuse a mismatch; `files` lets loading check that the
bytes on disk are the ones written (filecheck.py). Folders are written to a temporary sibling and
renamed into place, so a crash never leaves a half-written artifact under the real name, and the
next write (or resume) recovers what a kill at any instant left behind (safe_write.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, TypeVar

from .errors import ArtifactError
from .filecheck import record_files, sha256_file
# re-exported: the stages import the crash-safe writes from here, with the rest of the artifact tools
from .safe_write import (MANIFEST, artifact_dir, atomic_write_bytes, atomic_write_json,  # noqa: F401
                         disk_full_error, interrupted_writes, is_disk_full, recover_interrupted_write)

if TYPE_CHECKING:  # numpy and torch load lazily: the CLI imports this module to answer --help
    import numpy as np
    import torch

WEIGHTS = "model.safetensors"  # the weights file of every module artifact (tokenizer, models, classifier)
FORMAT = 1
C = TypeVar("C")


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
        dtype = None
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits, under its own name
                t, dtype = t.view(torch.int16), "bfloat16"
            arr = t.numpy()
        else:
            arr = np.ascontiguousarray(t)
        h.update(f"{name}|{dtype or arr.dtype}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    return sha256_file(path)


def write_manifest(
    folder: str | os.PathLike,
    *,
    kind: str,
    fingerprint: str,
    config: Mapping[str, Any] | None = None,
    made_from: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    files: bool = True,
) -> dict:
    """Write folder/manifest.json, last. files=True records the size and SHA-256 of every weights file
    in the folder (filecheck.record_files), which loading checks."""
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
    if files:
        manifest["files"] = record_files(folder)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> dict:
    """Read and check an artifact's manifest; `kind` restricts what is accepted."""
    folder = Path(folder)
    if not folder.is_dir():
        left = [p.name for p in interrupted_writes(folder)]
        hint = (f" (an interrupted write left {left}: rerun the command that writes it, which recovers or "
                "redoes it)") if left else ""
        raise ArtifactError(f"artifact folder not found: {folder}{hint}")
    m = read_json(folder / MANIFEST, what=f"manifest of {folder}")
    for key in ("kind", "format", "fingerprint"):
        if key not in m:
            raise ArtifactError(f"{folder / MANIFEST}: missing field '{key}'")
    if m["format"] != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST}: format {m['format']} is not supported (expected {FORMAT})")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and m["kind"] not in kinds:
        unfinished = (m.get("info") or {}).get("unfinished")  # a run's checkpoint says how to finish it
        raise ArtifactError(f"{folder} is a '{m['kind']}' artifact, expected {' or '.join(kinds)}"
                            + (f" ({unfinished})" if unfinished else ""))
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


# ---------------------------------------------------------------- the artifact base

class Artifact:
    """One kind of artifact folder as a class: it names its KIND and its files once, and its
    `save(folder)` / `load(folder)` are the only code that writes or reads such a folder.

    An instance carries `manifest` (what was read or written; None while it exists only in memory),
    `fingerprint` (what it is) and `made_from` (the fingerprints of its parents, by role). Subclasses
    build on the helpers of this module: `artifact_dir` for the atomic write, `write_manifest` last,
    `read_manifest` and filecheck for reading. See docs/ARCHITECTURE.md for adding a kind.
    """

    KIND: ClassVar[str] = ""
    manifest: dict | None = None

    @property
    def fingerprint(self) -> str:
        if self.manifest is None:
            raise NotImplementedError(f"{type(self).__name__} computes no fingerprint before it is saved")
        return str(self.manifest["fingerprint"])

    @property
    def made_from(self) -> dict[str, Any]:
        return dict((self.manifest or {}).get("made_from", {}))

    @classmethod
    def read_manifest(cls, folder: str | os.PathLike) -> dict:
        """The folder's manifest, refusing a folder of another kind."""
        return read_manifest(folder, cls.KIND)

    @staticmethod
    def typed_config(folder: str | os.PathLike, manifest: Mapping[str, Any], config_type: type[C],
                     key: str | None = None) -> C:
        """manifest["config"] (or its section `key`) as the dataclass `config_type`; a wrong or
        unknown field is a CtfgenError naming the manifest and the field."""
        from .config import from_dict

        raw, where = manifest.get("config", {}), f"{Path(folder) / MANIFEST}: config"
        if key is not None:
            if key not in raw:
                raise ArtifactError(f"{where} lacks the {config_type.__name__} ('{key}')")
            raw, where = raw[key], f"{where}.{key}"
        return from_dict(config_type, raw, where=where)

    def write_manifest(self, tmp: Path, *, config: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> dict:
        """Write tmp/manifest.json (last, inside `artifact_dir`) and keep it as self.manifest."""
        self.manifest = write_manifest(tmp, kind=self.KIND, fingerprint=self.fingerprint, config=config,
                                       made_from=self.made_from, info=info)
        return self.manifest

    @classmethod
    def load(cls, folder: str | os.PathLike, *args: Any, **kwargs: Any) -> "Artifact":
        raise NotImplementedError

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


class ModuleArtifact(Artifact):
    """An nn.Module saved as WEIGHTS (safetensors) beside a manifest whose config rebuilds it.

    Subclasses set KIND, REDO (how to remake a damaged folder, for errors) and implement
    `config_of(module)` (the manifest's config), `fingerprint_of(state, module)` and `build(folder,
    manifest)` (an empty module from the manifest).
    """

    WEIGHTS: ClassVar[str] = WEIGHTS
    REDO: ClassVar[str] = "make it again"
    FILES: ClassVar[tuple[str, ...]] = (MANIFEST, WEIGHTS)  # what a copy of the folder (a pipeline's) takes
    folder: Path | None = None  # the folder it was loaded from; None when made in memory
    info: Mapping[str, Any] | None = None  # what `save` records as the manifest's info when given none

    def __init__(self, module: torch.nn.Module, *, made_from: Mapping[str, Any] | None = None,
                 manifest: dict | None = None):
        self.module = module
        self._made_from = dict(made_from or {})
        self.manifest = manifest
        self._pending: tuple[dict, str] | None = None  # (state, fingerprint) copied for the next save

    @property
    def made_from(self) -> dict[str, Any]:
        return super().made_from if self.manifest is not None else dict(self._made_from)

    @property
    def fingerprint(self) -> str:
        if self.manifest is not None:
            return str(self.manifest["fingerprint"])
        return self.pending_manifest()["fingerprint"]

    def pending_manifest(self) -> dict[str, Any]:
        """The kind, fingerprint, config and made_from that `save` will write, to check before
        writing. The weights are copied and hashed once, here, and `save` writes that copy."""
        if self._pending is None:
            state = self.state()
            self._pending = (state, self.fingerprint_of(state, self.module))
        return {"kind": self.KIND, "fingerprint": self._pending[1], "config": self.config_of(self.module),
                "made_from": self.made_from}

    def state(self) -> dict[str, torch.Tensor]:
        """The module's tensors on the CPU, as they are written (copies: tied weights and views are
        refused by safetensors)."""
        from .run_state import cpu_tensors

        return cpu_tensors(self.module.state_dict())

    @classmethod
    def of(cls, module: "torch.nn.Module | ModuleArtifact") -> "ModuleArtifact":
        """`module` itself when it is already an artifact, else a bare module as one made in memory:
        no parents, and the fingerprint of its weights as saving would write it. Provenance lives on
        the artifact (what `load` returns), never on the module."""
        return module if isinstance(module, ModuleArtifact) else cls(module)

    @classmethod
    def config_of(cls, module: torch.nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def fingerprint_of(cls, state: Mapping[str, torch.Tensor], module: torch.nn.Module) -> str:
        return fingerprint_tensors(state)

    @classmethod
    def build(cls, folder: Path, manifest: dict) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def write_weights(cls, tmp: Path, state: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:
        from safetensors.torch import save_file

        save_file(dict(state), str(tmp / cls.WEIGHTS))

    @classmethod
    def write_folder(cls, tmp: Path, state: Mapping[str, torch.Tensor], *, fingerprint: str,
                     config: Mapping[str, Any], made_from: Mapping[str, Any], info: Mapping[str, Any] | None = None,
                     also: Callable[[Path], None] | None = None) -> dict:
        """Fill `tmp`, a folder open in `artifact_dir`: the weights, then whatever `also(tmp)` writes
        beside them, then the manifest, last; returns the manifest. The one writer of this kind's
        folders: `save`, and writers that add files of their own (a training run's checkpoint)."""
        cls.write_weights(tmp, state, fingerprint=fingerprint)
        if also is not None:
            also(tmp)
        return write_manifest(tmp, kind=cls.KIND, fingerprint=fingerprint, config=config, made_from=made_from,
                              info=info)

    @classmethod
    def read_weights(cls, folder: Path, manifest: Mapping[str, Any], name: str | None = None) -> dict:
        """The tensors of folder/name (default WEIGHTS), checked against the manifest's file record
        and for NaN/inf."""
        from .filecheck import check_finite, load_safetensors

        name = name or cls.WEIGHTS
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} not found")
        state = load_safetensors(folder, manifest, name, redo=cls.REDO)
        check_finite(state, where=str(folder / name))
        return state

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False, info: Mapping[str, Any] | None = None,
             config: Mapping[str, Any] | None = None, extra_files: Mapping[str, bytes] | None = None) -> dict:
        """Write the folder atomically (weights, `extra_files` name -> bytes, manifest last); returns
        the manifest. config: the manifest's config (default `config_of(module)`)."""
        self._made_from, self.manifest = self.made_from, None  # from here on it describes the new folder
        self.pending_manifest()
        (state, fp), self._pending = self._pending, None

        def write_extra(tmp: Path) -> None:
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)

        with artifact_dir(folder, overwrite=overwrite) as tmp:
            manifest = self.write_folder(tmp, state, fingerprint=fp, made_from=self.made_from,
                                         info=self.info if info is None else info,
                                         config=self.config_of(self.module) if config is None else config,
                                         also=write_extra)
        self.manifest = manifest
        return manifest

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu", *,
             weights: str | None = None, manifest: dict | None = None) -> "ModuleArtifact":
        """Rebuild the module from the manifest and load `weights` (default WEIGHTS) strictly."""
        folder = Path(folder)
        manifest = cls.read_manifest(folder) if manifest is None else manifest
        module = cls.build(folder, manifest)
        state = cls.read_weights(folder, manifest, weights)
        check_state_dict(module, state, where=str(folder / (weights or cls.WEIGHTS)))
        module.load_state_dict(state, strict=True)
        cls.check_weights(folder, manifest, state)
        art = cls(module.to(device).eval(), manifest=manifest)
        art.folder = folder
        return art

    @classmethod
    def check_weights(cls, folder: Path, manifest: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
        """Further checks of the loaded tensors (the tokenizer compares them with its fingerprint)."""
