"""Token codes on disk: a dataset split encoded once into one compact, memory-mapped store.

A store is a folder:
    codes.npy    uint16 (N, n_views, L)  raster-order codebook indices, one row per augmented view
    labels.npy   int64  (N,)
    manifest.json  kind "codes": grid, vocab size, views, split, and the fingerprints of the
                   tokenizer and the data it was made from.
Images are encoded in chunks saved as they finish (in `.<out>.parts` beside the store), so a killed
run continues where it stopped. Under `torchrun`, the processes share the chunks and rank 0 joins
them, so ImageNet-scale extraction spreads over GPUs and nodes.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable

import numpy as np
import torch

from .artifacts import (MANIFEST, Artifact, ModuleArtifact, artifact_dir, atomic_write_json, check_made_from,
                        disk_full_error, fingerprint_tensors, is_disk_full, recover_interrupted_write, write_manifest)
from .config import check_class_ids, to_dict
from .dist import joined_group
from .errors import ArtifactError, CtfgenError
from .filecheck import verify_file
from .progress import progress_bar

KIND = "codes"
CHUNK = 4096  # images per saved piece of an encoding run: what a kill can lose


@dataclass(kw_only=True)
class CodesConfig:
    """What a store holds: the config its manifest is written with (`CodeStore.save`)."""

    split: str = ""
    limit: int = 0  # the first `limit` images were encoded (0: all)
    views: str = "none"  # "none", "flip" or "tencrop"
    crop_range: float = 1.1
    n_views: int = 1
    grid: list[int]  # [h, w] tokens per image
    vocab_size: int  # codebook size V
    num_classes: int
    class_names: list[str] = field(default_factory=list)


@dataclass
class CodeStore(Artifact):
    """An encoded split: CODES (memory-mapped) and LABELS, with the manifest they were written with."""

    KIND: ClassVar[str] = KIND
    CODES: ClassVar[str] = "codes.npy"
    LABELS: ClassVar[str] = "labels.npy"
    folder: Path
    codes: np.ndarray  # uint16 (N, n_views, L), memory-mapped
    labels: np.ndarray  # int64 (N,)
    manifest: dict

    @classmethod
    def open(cls, folder: str | Path) -> "CodeStore":
        folder = Path(folder)
        m = cls.read_manifest(folder)
        for name in (cls.CODES, cls.LABELS):
            verify_file(folder, m, name, redo="re-run `ctfgen encode`")
        try:
            codes = np.load(folder / cls.CODES, mmap_mode="r")
            labels = np.load(folder / cls.LABELS)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read the code store {folder}: {e}") from None
        cfg = m["config"]  # read leniently: stores written by hand or by older releases hold other fields
        for key in ("grid", "vocab_size", "num_classes"):
            if key not in cfg:
                raise ArtifactError(f"{folder / MANIFEST}: config lacks '{key}'")
        if codes.ndim != 3 or codes.shape[0] != len(labels) or codes.shape[2] != cfg["grid"][0] * cfg["grid"][1]:
            raise ArtifactError(f"{folder}: {cls.CODES} {codes.shape} / {cls.LABELS} {labels.shape} do not match the manifest grid {cfg['grid']}")
        check_class_ids(labels, cfg["num_classes"], where=f"{folder / cls.LABELS} (num_classes {cfg['num_classes']} in "
                                                          f"{MANIFEST})")
        return cls(folder, codes, labels, m)

    load = open

    @classmethod
    def save(cls, out_dir: str | Path, codes: np.ndarray | Iterable[np.ndarray], labels: np.ndarray, *,
             config: CodesConfig, made_from: dict, info: dict | None = None,
             extra_files: dict[str, bytes] | None = None, overwrite: bool = False) -> "CodeStore":
        """Write a store atomically and open it. codes: (N, n_views, L) codebook indices, or its
        consecutive row blocks (written one by one, so the whole never needs to fit in memory);
        labels: (N,) class ids. The fingerprint hashes codes and labels."""
        labels = np.asarray(labels, dtype=np.int64)
        shape = (len(labels), config.n_views, config.grid[0] * config.grid[1])
        blocks = [codes] if isinstance(codes, np.ndarray) else codes
        with artifact_dir(out_dir, overwrite=overwrite) as tmp:
            out = np.lib.format.open_memmap(tmp / cls.CODES, mode="w+", dtype=np.uint16, shape=shape)
            row = 0
            for block in blocks:
                out[row:row + len(block)] = block
                row += len(block)
            if row != shape[0]:
                raise CtfgenError(f"code store {out_dir}: {row} rows of codes for {shape[0]} labels")
            out.flush()
            fp = fingerprint_tensors({"codes": np.asarray(out), "labels": labels})
            del out
            np.save(tmp / cls.LABELS, labels)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            write_manifest(tmp, kind=KIND, fingerprint=fp, config=to_dict(config), made_from=made_from, info=info)
        return cls.open(out_dir)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["config"]["grid"])

    @property
    def vocab_size(self) -> int:
        return self.manifest["config"]["vocab_size"]

    @property
    def num_classes(self) -> int:
        return self.manifest["config"]["num_classes"]

    @property
    def n_views(self) -> int:
        return self.codes.shape[1]

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.manifest["made_from"]["tokenizer"]

    def check_tokenizer(self, fingerprint: str) -> None:
        check_made_from(f"codes {self.folder} vs tokenizer", self.tokenizer_fingerprint, fingerprint,
                        hint="these codes were made with another tokenizer; re-run `ctfgen encode` with it")

    def __len__(self) -> int:
        return len(self.labels)


def encode_dataset(tokenizer, dataset, out_dir: str | Path, *, views: str = "none", crop_range: float = 1.1,
                   batch_size: int = 256, limit: int = 0, device: str | torch.device = "cpu", overwrite: bool = False,
                   progress: bool = True, chunk: int = CHUNK, on_chunk=None) -> CodeStore | None:
    """Encode every image (and its augmented views) of `dataset`, or its first `limit` images; returns
    the store on rank 0. `tokenizer`: a TokenizerArtifact (`TokenizerArtifact.load(folder)`: the
    store records its fingerprint) or a bare VQModel (the store records the hash of its weights,
    which is what saving it writes as its fingerprint). `views`: "none" (the image alone, the
    default), "flip" (and its mirror) or "tencrop" (LlamaGen's ImageNet recipe). Writes
    classes.json: the class ids, names and the number of images encoded per class.

    Resumable: images are encoded in chunks of `chunk` images, each saved as soon as it is done in
    the work folder `.<out>.parts` beside `out_dir`; running the same call again (same tokenizer,
    data, views, limit) encodes only the missing chunks, with any number of processes.
    `on_chunk(start)` runs after each saved chunk (tests).
    """
    if isinstance(tokenizer, ModuleArtifact):
        tokenizer_fp, tokenizer = tokenizer.fingerprint, tokenizer.module
    else:  # a tokenizer's fingerprint is the hash of its weights (tokenizer/artifact.py: TokenizerArtifact)
        tokenizer_fp = fingerprint_tensors(tokenizer.state_dict())
    V = tokenizer.config.codebook_size
    if V > 65536:
        raise CtfgenError(f"codebook of {V} entries does not fit the uint16 code store")
    if dataset.channels != tokenizer.config.channels:
        raise CtfgenError(f"the data has {dataset.channels} channel(s) but the tokenizer expects {tokenizer.config.channels}")
    if dataset.resolution != tokenizer.config.resolution:
        raise CtfgenError(f"the data resolution {dataset.resolution} differs from the tokenizer's {tokenizer.config.resolution}")
    out_dir = Path(out_dir)
    group = joined_group()
    rank, world = group.rank, group.world_size
    if rank == 0:
        note = recover_interrupted_write(out_dir)
        if note:
            print(f"note: {note}", file=sys.stderr)
    if world > 1:
        torch.distributed.barrier()  # every rank decides on the recovered folder
    if out_dir.exists() and not overwrite:
        _drop_finished_work(out_dir)
        raise CtfgenError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise CtfgenError(f"limit: expected a number of images >= 0 (0: all), got {limit!r}")
    n = min(limit, len(dataset)) if limit else len(dataset)
    n_views = len(dataset.views(0, views, crop_range))
    g = tokenizer.config.grid
    if chunk < 1:
        raise CtfgenError(f"chunk: expected a number of images >= 1, got {chunk!r}")
    labels = np.asarray(dataset.labels, dtype=np.int64)[:n]
    job = {"tokenizer": tokenizer_fp, "data": dataset.fingerprint, "split": dataset.split, "images": n,
           "views": views, "crop_range": crop_range, "n_views": n_views, "grid": g, "chunk": chunk}
    work = out_dir.with_name(f".{out_dir.name}.parts")
    if rank == 0:
        _open_work(work, job)
    if world > 1:
        torch.distributed.barrier()
    from .data import to_tensor

    t0 = time.time()
    starts = list(range(0, n, chunk))
    mine = [c for i, c in enumerate(starts) if i % world == rank and not _chunk_path(work, c).is_file()]
    bar = progress_bar(total=sum(min(n, c + chunk) - c for c in mine), desc=f"encode {dataset.split}"
               + (f" [rank {rank}]" if world > 1 else ""), show=(progress and rank == 0), unit="img")
    try:
        tokenizer = tokenizer.to(device).eval()
        for c in mine:
            part = np.zeros((min(n, c + chunk) - c, n_views, g * g), dtype=np.uint16)
            for start in range(c, c + len(part), batch_size):
                idx = range(start, min(c + len(part), start + batch_size))
                x = torch.stack([to_tensor(v) for i in idx for v in dataset.views(i, views, crop_range)]).to(device)
                codes_BHW = tokenizer.encode_codes(x)
                part[start - c:start - c + len(idx)] = codes_BHW.view(len(idx), n_views, -1).cpu().numpy().astype(np.uint16)
                bar.update(len(idx))
            _save_chunk(work, c, part)
            if on_chunk is not None:
                on_chunk(c)
    except BaseException:
        bar.close()
        _leave_work(work)
        raise
    bar.close()
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            return None
    resumed = n - sum(min(n, c + chunk) - c for c in mine) if world == 1 else None
    from .data import CLASSES_FILE, class_counts, dataset_class_table
    from .data.classes import classes_json

    encoded = {dataset.split: class_counts(dataset, n).tolist()}
    description = dataset.describe()
    composited, note = dataset.transparency_note(n)
    if note:
        print(note, file=sys.stderr)
    store = CodeStore.save(
        out_dir, (_load_chunk(work, c, (min(n, c + chunk) - c, n_views, g * g)) for c in starts), labels,
        config=CodesConfig(split=dataset.split, limit=limit, views=views, crop_range=crop_range, n_views=n_views,
                           grid=[g, g], vocab_size=V, num_classes=dataset.num_classes,
                           class_names=list(dataset.class_names)),
        made_from={"tokenizer": tokenizer_fp, "data": dataset.fingerprint, "data_description": description},
        info={"images": n, "seconds": round(time.time() - t0, 1), "processes": world,
              **({"composited_images": composited} if "background" in description else {}),
              **({"resumed_images": resumed} if resumed else {})},
        extra_files={CLASSES_FILE: classes_json(dataset_class_table(dataset, counts=encoded))}, overwrite=overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return store


def _drop_finished_work(out: Path) -> None:
    """Delete the chunks of an encoding whose store was written but which was killed before cleaning up."""
    work = out.with_name(f".{out.name}.parts")
    try:
        job = json.loads((work / "job.json").read_text())
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    if (m.get("made_from", {}).get("tokenizer"), m.get("made_from", {}).get("data"), m.get("info", {}).get("images"),
            m.get("config", {}).get("views")) == (job.get("tokenizer"), job.get("data"), job.get("images"), job.get("views")):
        shutil.rmtree(work, ignore_errors=True)


def _leave_work(work: Path) -> None:
    """After a failed or interrupted encoding: remove the work folder when it holds no finished chunk
    (nothing to resume; issue 22: an empty hidden folder was left), else say where the chunks are kept."""
    done = len(list(work.glob("chunk-*.npy"))) if work.is_dir() else 0
    if not done:
        shutil.rmtree(work, ignore_errors=True)
        return
    print(f"note: {done} finished chunk(s) of this encoding are kept in {work}: running the same command again "
          "resumes from them; delete that folder to start afresh", file=sys.stderr)


def _open_work(work: Path, job: dict) -> None:
    """Keep the chunks of an interrupted run of the same job; start afresh otherwise."""
    if work.is_dir():
        try:
            same = json.loads((work / "job.json").read_text()) == job
        except (OSError, ValueError):
            same = False
        if same:
            done = len(list(work.glob("chunk-*.npy")))
            if done:
                print(f"note: resuming the encoding in {work}: {done} chunk(s) of {job['chunk']} images already done",
                      file=sys.stderr)
            return
        shutil.rmtree(work)  # the leftovers of another encoding job
    work.mkdir(parents=True)
    atomic_write_json(work / "job.json", job)


def _chunk_path(work: Path, start: int) -> Path:
    return work / f"chunk-{start:010d}.npy"


def _save_chunk(work: Path, start: int, part: np.ndarray) -> None:
    tmp = work / f".chunk-{start:010d}.{os.getpid()}.tmp.npy"
    try:
        np.save(tmp, part)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(work) from None
        raise
    os.replace(tmp, _chunk_path(work, start))


def _load_chunk(work: Path, start: int, shape: tuple[int, ...]) -> np.ndarray:
    path = _chunk_path(work, start)
    try:
        part = np.load(path)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path} ({e}); delete it and run the same encode again") from None
    if part.shape != shape or part.dtype != np.uint16:
        raise ArtifactError(f"{path} holds {part.dtype} {part.shape}, expected uint16 {shape}; delete it and run the "
                            "same encode again")
    return part
