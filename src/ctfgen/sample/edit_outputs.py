"""Where edits go: a side-by-side figure (a row per source image), and a folder of PNGs with the
coarse maps before and after (CTF) and edit.json, what was done."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import artifact_dir, atomic_write_json, fingerprint_tensors, write_manifest
from ..config import to_dict
from .coarse_view import label_maps
from .editing import Edits
from .outputs import png_bytes

GAP = 4  # white pixels between the figure's groups (before scaling)


def rgb(images_NHWC: np.ndarray) -> np.ndarray:
    return np.repeat(images_NHWC, 3, axis=-1) if images_NHWC.shape[-1] == 1 else images_NHWC


def redrawn_overlay(images_NHWC: np.ndarray, kept_L: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3): the images with the pixels of redrawn token positions tinted red, so a
    figure shows what an edit keeps."""
    out = rgb(images_NHWC).astype(np.float32)
    N, H, W = out.shape[:3]
    g = int(round(len(kept_L) ** 0.5))
    redrawn_HW = (~kept_L.reshape(g, g)).repeat(H // g, 0).repeat(W // g, 1)
    out[:, redrawn_HW] = 0.55 * out[:, redrawn_HW] + 0.45 * np.array([255.0, 40.0, 40.0])
    return out.round().astype(np.uint8)


def coarse_maps(pipe, edits: Edits) -> tuple[np.ndarray, np.ndarray]:
    """CTF: the coloured coarse-label maps of the sources (N, H, W, 3) and of the edits (M, H, W, 3)."""
    K = pipe.models["aux"].config.coarse_vocab
    H, W = edits.samples.images.shape[1:3]
    return label_maps(edits.source.coarse, K, H, W), label_maps(edits.samples.coarse, K, H, W)


def edit_figure(ctf_pipe=None, ctf: Edits | None = None, baseline: Edits | None = None, *, scale: int = 4) -> np.ndarray:
    """uint8 (rows, cols, 3), a row per source image: the source (redrawn area tinted) | CTF: its
    coarse map before, each edit's coarse map after and each edit | the baseline's edits. Both edits
    must come from the same sources (the same n)."""
    first = ctf if ctf is not None else baseline
    if first is None:
        return np.zeros((0, 0, 3), np.uint8)
    n = int(first.record["n"])
    src = redrawn_overlay(first.source.images, first.kept_L)
    N, H = src.shape[:2]

    def space(width: int) -> np.ndarray:
        return np.full((N, H, width, 3), 255, np.uint8)

    def each(images_MHWC: np.ndarray) -> list[np.ndarray]:  # the n edits of each source, a pixel apart
        parts = [images_MHWC[k::n] for k in range(n)]
        return [x for k, part in enumerate(parts) for x in ((space(1), part) if k else (part,))]

    groups = [src]
    if ctf is not None:
        before, after = coarse_maps(ctf_pipe, ctf)
        groups += [space(GAP), before, space(GAP), *each(after), space(GAP), *each(rgb(ctf.samples.images))]
    if baseline is not None:
        groups += [space(GAP), *each(rgb(baseline.samples.images))]
    rows = np.concatenate(groups, axis=2)
    pad = np.full((N, GAP, rows.shape[2], 3), 255, np.uint8)
    fig = np.concatenate([np.concatenate([r, p]) for r, p in zip(rows, pad)])[:-GAP]
    return fig.repeat(scale, 0).repeat(scale, 1)


def save_edits(out: str | Path, *, ctf_pipe=None, ctf: Edits | None = None, baseline: Edits | None = None,
               models: dict[str, Any], scale: int = 4, extra: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """A folder: edits.png (`edit_figure`), source/NNNNNN.png, ctf/ and baseline/ (each edit, and
    for CTF coarse-before-NNNNNN.png per source and coarse-after-NNNNNN.png per edit), edit.json
    (the edit, its parameters and settings, seeds, source, times, model fingerprints) and a manifest
    (kind "edits"). Written atomically: nothing appears unless all of it does."""
    first = ctf if ctf is not None else baseline
    record: dict[str, Any] = {**{k: v for k, v in first.record.items() if k != "pipeline"}, **(extra or {}),
                              "source": first.source.origin, "source_labels": first.source.labels.tolist(),
                              "models": models, "figure": "edits.png"}
    tensors = {"source_codes": first.source.codes}
    with artifact_dir(out, overwrite=overwrite) as tmp:
        (tmp / "edits.png").write_bytes(png_bytes(edit_figure(ctf_pipe, ctf, baseline, scale=scale)))
        (tmp / "source").mkdir()
        for i, im in enumerate(first.source.images):
            (tmp / "source" / f"{i:06d}.png").write_bytes(png_bytes(im))
        for name, edits in (("ctf", ctf), ("baseline", baseline)):
            if edits is None:
                continue
            (tmp / name).mkdir()
            for m, im in enumerate(edits.samples.images):
                (tmp / name / f"{m:06d}.png").write_bytes(png_bytes(im))
            if name == "ctf":
                before, after = coarse_maps(ctf_pipe, edits)
                for i, im in enumerate(before):
                    (tmp / name / f"coarse-before-{i:06d}.png").write_bytes(png_bytes(im))
                for m, im in enumerate(after):
                    (tmp / name / f"coarse-after-{m:06d}.png").write_bytes(png_bytes(im))
            record[name] = {"settings": to_dict(edits.samples.settings), "seconds": round(edits.seconds, 3),
                            "edits": [{"file": f"{name}/{m:06d}.png", "source": int(i), "seed": int(sd)}
                                      for m, (i, sd) in enumerate(zip(edits.source_index, edits.samples.seeds))]}
            tensors[f"{name}_codes"] = edits.samples.codes
        atomic_write_json(tmp / "edit.json", record)
        write_manifest(tmp, kind="edits", fingerprint=fingerprint_tensors(tensors),
                       config={k: v for k, v in record.items() if k not in ("ctf", "baseline")},
                       made_from={k: v for k, v in models.items()})
    return Path(out)
