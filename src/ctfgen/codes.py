"""Token codes on disk: a dataset split encoded once into one compact, memory-mapped store.

A store is a folder:
    codes.npy    uint16 (N, n_views, L)  raster-order codebook indices, one row per augmented view
    labels.npy   int64  (N,)
    manifest.json  kind "codes": grid, vocab size, views, split, and the fingerprints of the
                   tokenizer and the data it was made from.
Under `torchrun`, each process encodes a contiguous shard into its own part file and rank 0 joins
them, so ImageNet-scale extraction spreads over GPUs and nodes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .artifacts import artifact_dir, check_made_from, fingerprint_tensors, read_manifest, write_manifest
from .errors import ArtifactError, CtfgenError

KIND = "codes"


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


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def encode_dataset(tokenizer, dataset, out_dir: str | Path, *, views: str = "none", crop_range: float = 1.1,
                   batch_size: int = 256, limit: int = 0, device: str | torch.device = "cpu", overwrite: bool = False,
                   progress: bool = True) -> CodeStore | None:
    """Encode every image (and its augmented views) of `dataset`, or its first `limit` images; returns
    the store on rank 0. `views`: "none" (the image alone, the default), "flip" (and its mirror) or
    "tencrop" (LlamaGen's ImageNet recipe). Writes classes.json: the class ids, names and the
    number of images encoded per class."""
    V = tokenizer.config.codebook_size
    if V > 65536:
        raise CtfgenError(f"codebook of {V} entries does not fit the uint16 code store")
    if dataset.channels != tokenizer.config.channels:
        raise CtfgenError(f"the data has {dataset.channels} channel(s) but the tokenizer expects {tokenizer.config.channels}")
    if dataset.resolution != tokenizer.config.resolution:
        raise CtfgenError(f"the data resolution {dataset.resolution} differs from the tokenizer's {tokenizer.config.resolution}")
    out_dir = Path(out_dir)
    rank, world = _dist_info()
    if out_dir.exists() and not overwrite:
        raise CtfgenError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise CtfgenError(f"limit: expected a number of images >= 0 (0: all), got {limit!r}")
    n = min(limit, len(dataset)) if limit else len(dataset)
    n_views = len(dataset.views(0, views, crop_range))
    g = tokenizer.config.grid
    lo, hi = rank * n // world, (rank + 1) * n // world
    part = np.zeros((hi - lo, n_views, g * g), dtype=np.uint16)
    tokenizer = tokenizer.to(device).eval()
    from .data import to_tensor

    t0 = time.time()
    for start in tqdm(range(lo, hi, batch_size), desc=f"encode {dataset.split}" + (f" [rank {rank}]" if world > 1 else ""),
                      disable=not progress or rank != 0):
        idx = range(start, min(hi, start + batch_size))
        x = torch.stack([to_tensor(v) for i in idx for v in dataset.views(i, views, crop_range)]).to(device)
        codes_BHW = tokenizer.encode_codes(x)
        part[start - lo:start - lo + len(idx)] = codes_BHW.view(len(idx), n_views, -1).cpu().numpy().astype(np.uint16)

    parts_dir = out_dir.with_name(f".{out_dir.name}.parts")
    if world > 1:
        parts_dir.mkdir(parents=True, exist_ok=True)
        np.save(parts_dir / f"part{rank:05d}.npy.tmp.npy", part)
        os.replace(parts_dir / f"part{rank:05d}.npy.tmp.npy", parts_dir / f"part{rank:05d}.npy")
        torch.distributed.barrier()
        if rank != 0:
            return None
        part = np.concatenate([np.load(parts_dir / f"part{r:05d}.npy") for r in range(world)])
    labels = np.asarray(dataset.labels, dtype=np.int64)[:n]
    fp = fingerprint_tensors({"codes": part, "labels": labels})
    from .data import CLASSES_FILE, dataset_class_table
    from .data.classes import classes_json

    encoded = {dataset.split: np.bincount(labels, minlength=dataset.num_classes).tolist()}
    with artifact_dir(out_dir, overwrite=overwrite) as tmp:
        np.save(tmp / "codes.npy", part)
        np.save(tmp / "labels.npy", labels)
        (tmp / CLASSES_FILE).write_bytes(classes_json(dataset_class_table(dataset, counts=encoded)))
        write_manifest(
            tmp, kind=KIND, fingerprint=fp,
            config={"split": dataset.split, "limit": limit, "views": views, "crop_range": crop_range, "n_views": n_views,
                    "grid": [g, g], "vocab_size": V, "num_classes": dataset.num_classes,
                    "class_names": list(dataset.class_names)},
            made_from={"tokenizer": tokenizer.fingerprint, "data": dataset.fingerprint, "data_description": dataset.describe()},
            info={"images": n, "seconds": round(time.time() - t0, 1), "processes": world},
        )
    if world > 1:
        import shutil
        shutil.rmtree(parts_dir, ignore_errors=True)
    return CodeStore.open(out_dir)
