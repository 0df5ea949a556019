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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .artifacts import (artifact_dir, atomic_write_json, check_made_from, disk_full_error, fingerprint_tensors,
                        is_disk_full, read_manifest, recover_interrupted_write, write_manifest)
from .dist import joined_group
from .errors import ArtifactError, CtfgenError
from .filecheck import verify_file

KIND = "codes"
CHUNK = 4096  # images per saved piece of an encoding run: what a kill can lose


@dataclass
class CodeStore:
    folder: Path
    codes: np.ndarray  # uint16 (N, n_views, L), memory-mapped
    labels: np.ndarray  # int64 (N,)
    manifest: dict

    @classmethod
    def open(cls, folder: str | Path) -> "CodeStore":
        folder = Path(folder)
        m = read_manifest(folder, KIND)
        for name in ("codes.npy", "labels.npy"):
            verify_file(folder, m, name, redo="re-run `ctfgen encode`")
        try:
            codes = np.load(folder / "codes.npy", mmap_mode="r")
            labels = np.load(folder / "labels.npy")
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read the code store {folder}: {e}") from None
        cfg = m["config"]
        if codes.ndim != 3 or codes.shape[0] != len(labels) or codes.shape[2] != cfg["grid"][0] * cfg["grid"][1]:
            raise ArtifactError(f"{folder}: codes.npy {codes.shape} / labels.npy {labels.shape} do not match the manifest grid {cfg['grid']}")
        return cls(folder, codes, labels, m)

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
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

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
    the store on rank 0. `views`: "none" (the image alone, the default), "flip" (and its mirror) or
    "tencrop" (LlamaGen's ImageNet recipe). Writes classes.json: the class ids, names and the
    number of images encoded per class.

    Resumable: images are encoded in chunks of `chunk` images, each saved as soon as it is done in
    the work folder `.<out>.parts` beside `out_dir`; running the same call again (same tokenizer,
    data, views, limit) encodes only the missing chunks, with any number of processes.
    `on_chunk(start)` runs after each saved chunk (tests).
    """
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
    job = {"tokenizer": tokenizer.fingerprint, "data": dataset.fingerprint, "split": dataset.split, "images": n,
           "views": views, "crop_range": crop_range, "n_views": n_views, "grid": g, "chunk": chunk}
    work = out_dir.with_name(f".{out_dir.name}.parts")
    if rank == 0:
        _open_work(work, job)
    if world > 1:
        torch.distributed.barrier()
    tokenizer = tokenizer.to(device).eval()
    from .data import to_tensor

    t0 = time.time()
    starts = list(range(0, n, chunk))
    mine = [c for i, c in enumerate(starts) if i % world == rank and not _chunk_path(work, c).is_file()]
    bar = tqdm(total=sum(min(n, c + chunk) - c for c in mine), desc=f"encode {dataset.split}"
               + (f" [rank {rank}]" if world > 1 else ""), disable=not progress or rank != 0, unit="img")
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
    bar.close()
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            return None
    resumed = n - sum(min(n, c + chunk) - c for c in mine) if world == 1 else None
    from .data import CLASSES_FILE, dataset_class_table
    from .data.classes import classes_json

    encoded = {dataset.split: np.bincount(labels, minlength=dataset.num_classes).tolist()}
    with artifact_dir(out_dir, overwrite=overwrite) as tmp:
        codes = np.lib.format.open_memmap(tmp / "codes.npy", mode="w+", dtype=np.uint16, shape=(n, n_views, g * g))
        for c in starts:
            codes[c:c + chunk] = _load_chunk(work, c, (min(n, c + chunk) - c, n_views, g * g))
        codes.flush()
        fp = fingerprint_tensors({"codes": np.asarray(codes), "labels": labels})
        del codes
        np.save(tmp / "labels.npy", labels)
        (tmp / CLASSES_FILE).write_bytes(classes_json(dataset_class_table(dataset, counts=encoded)))
        write_manifest(
            tmp, kind=KIND, fingerprint=fp,
            config={"split": dataset.split, "limit": limit, "views": views, "crop_range": crop_range, "n_views": n_views,
                    "grid": [g, g], "vocab_size": V, "num_classes": dataset.num_classes,
                    "class_names": list(dataset.class_names)},
            made_from={"tokenizer": tokenizer.fingerprint, "data": dataset.fingerprint, "data_description": dataset.describe()},
            info={"images": n, "seconds": round(time.time() - t0, 1), "processes": world,
                  **({"resumed_images": resumed} if resumed else {})},
        )
    shutil.rmtree(work, ignore_errors=True)
    return CodeStore.open(out_dir)


def _drop_finished_work(out: Path) -> None:
    """Delete the chunks of an encoding whose store was written but which was killed before cleaning up."""
    work = out.with_name(f".{out.name}.parts")
    try:
        job = json.loads((work / "job.json").read_text())
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    if (m.get("made_from", {}).get("tokenizer"), m.get("made_from", {}).get("data"), m.get("info", {}).get("images"),
            m.get("config", {}).get("views")) == (job.get("tokenizer"), job.get("data"), job.get("images"), job.get("views")):
        shutil.rmtree(work, ignore_errors=True)


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
