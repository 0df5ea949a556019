"""Editing images with the generators: detail variations, completion and region resampling.

Each edit keeps some of an image's tokens and draws the rest; the image is a generated sample (its
codes, and for CTF its coarse labels, come with it) or any image the pipeline's tokenizer encodes.

- vary (CTF only): keep every coarse label, draw stage 2 again: the layout stays, the details
  change (stage-2 temperature is the knob).
- complete: keep the first P tokens in raster order, draw the rest. CTF: stage 1 continues the
  coarse sequence from the kept prefix (teacher-forced through the KV cache), stage 2 draws the
  fine tokens given the whole coarse map; the baseline continues its code sequence.
- inpaint: keep every token outside a rectangle of the token grid. mode "detail" (CTF): stage 2
  draws the region's fine tokens given all coarse labels. mode "layout": the causal model (CTF's
  stage 1, or the baseline) draws the region's tokens in raster order with every position outside
  the region teacher-forced, then (CTF) stage 2 draws the region's fine tokens.

What a causal model cannot see: drawing region position i in raster order conditions on the tokens
before i only. The kept tokens after i (the rest of the region's rows to the right, and all rows
below) are fed in afterwards but never shape the choice at i, so a region can clash with what lies
below or right of it. `gibbs_sweeps` > 0 then resamples each region position from its full
conditional given every other token (sample/gibbs.py), which sees both sides.

Stage 2 reads coarse labels only: the fine tokens kept around a region do not inform the region's new
fine tokens (CTF keeps them exactly, but draws the others from the coarse map and the class).

Randomness is per edit, as in `Pipeline.generate`: edit m (source m // n, its variation m % n) draws
from the seed sample_seed(seed, m) the same 2L (CTF) or L (baseline) uniforms a fresh sample would,
token t using uniform t; so an edit does not depend on the batch size, and completing from P = 0
tokens is `generate` with the same seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CtfgenError
from .edit_sources import EditSource, as_source
from .gibbs import gibbs_sweeps as run_gibbs
from .pipeline import Samples
from .sampler import generate_tokens, sample_seed, sample_uniforms

EDITS = ("vary", "complete", "inpaint")
MODES = ("detail", "layout")


@dataclass
class Edits:
    """What an edit made: `samples` in edit order (edit m comes from source m // n)."""

    samples: Samples  # images, codes, labels, seeds, settings; CTF: coarse labels after the edit
    source: EditSource  # with `images` and (CTF) `coarse` filled in
    source_index: np.ndarray  # int64 (M,) the source image of each edit
    kept_L: np.ndarray  # bool (L,) positions whose codes are the source's
    record: dict[str, Any] = field(default_factory=dict)  # JSON-ready: the edit and its parameters
    seconds: float = 0.0  # wall clock of the edits (tokens and decoding)


# ---------------------------------------------------------------- what is kept

def prefix_mask(keep_tokens: int, seq_len: int) -> np.ndarray:
    """bool (L,): the first `keep_tokens` positions in raster order; CtfgenError outside 0..L."""
    if isinstance(keep_tokens, bool) or not isinstance(keep_tokens, (int, np.integer)):
        raise CtfgenError(f"keep_tokens: a whole number of tokens (0..{seq_len}), got {keep_tokens!r}")
    if not 0 <= keep_tokens <= seq_len:
        raise CtfgenError(f"keep_tokens: {keep_tokens} is outside 0..{seq_len} (the image has {seq_len} tokens)")
    return np.arange(seq_len) < keep_tokens


def region_mask(region: Sequence[int], grid: int) -> np.ndarray:
    """bool (L,) raster order: True inside `region` = (top, left, height, width) in token-grid units
    (a grid of `grid` x `grid` tokens). CtfgenError when it is empty or leaves the grid."""
    try:
        top, left, height, width = (int(v) for v in region)
        if any(int(v) != v for v in region):
            raise ValueError
    except (TypeError, ValueError):
        raise CtfgenError(f"region: four whole numbers (top, left, height, width) in tokens, got {region!r}") from None
    if height < 1 or width < 1:
        raise CtfgenError(f"region: {height}x{width} tokens is empty; height and width must be >= 1")
    if top < 0 or left < 0 or top + height > grid or left + width > grid:
        raise CtfgenError(f"region: rows {top}..{top + height - 1}, columns {left}..{left + width - 1} leave the "
                          f"{grid}x{grid} token grid (rows and columns 0..{grid - 1})")
    inside = np.zeros((grid, grid), bool)
    inside[top:top + height, left:left + width] = True
    return inside.ravel()


# ---------------------------------------------------------------- the edits

def _check_edit(pipe, kind: str, n, mode: str, gibbs_sweeps, batch_size: int) -> None:
    """Refuse an edit the pipeline cannot make, or a bad count, before anything is drawn."""
    if kind not in EDITS:
        raise CtfgenError(f"edit: {kind!r} is not one of {EDITS}")
    ctf = pipe.coarse_to_fine
    if kind == "vary" and not ctf:
        raise CtfgenError("vary: detail variations redraw CTF's stage 2 under a fixed coarse map; the baseline has "
                          "no such stage (use inpaint or complete)")
    if mode not in MODES:
        raise CtfgenError(f"mode: {mode!r} is not one of {MODES}")
    if kind == "inpaint" and mode == "detail" and not ctf:
        raise CtfgenError("mode 'detail' redraws CTF's stage 2 only; the baseline resamples a region with mode "
                          "'layout' (raster order)")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CtfgenError(f"n: the number of edits per image must be a whole number >= 1, got {n!r}")
    if isinstance(gibbs_sweeps, bool) or not isinstance(gibbs_sweeps, (int, np.integer)) or gibbs_sweeps < 0:
        raise CtfgenError(f"gibbs_sweeps: a whole number >= 0, got {gibbs_sweeps!r}")
    if batch_size < 1:
        raise CtfgenError(f"batch_size must be >= 1, got {batch_size}")


def _kept_positions(kind: str, L: int, grid: int, keep_tokens, region, mode: str, record: dict):
    """(keep_codes_L, keep_layout_L) bool: the positions whose code, and whose coarse label, the edit
    keeps; adds the edit's own arguments to `record`."""
    if kind == "vary":
        return np.zeros(L, bool), np.ones(L, bool)
    if kind == "complete":
        if keep_tokens is None:
            raise CtfgenError("complete: give keep_tokens (how many tokens, in raster order, to keep)")
        record["keep_tokens"] = int(keep_tokens)
        keep = prefix_mask(keep_tokens, L)
        return keep, keep
    if region is None:
        raise CtfgenError("inpaint: give region=(top, left, height, width) in token-grid units")
    inside = region_mask(region, grid)
    record.update(region=[int(v) for v in region], mode=mode)
    return ~inside, (np.ones(L, bool) if mode == "detail" else ~inside)


def _checked_source(pipe, source, labels, L: int):
    """The source as codes (N, L) within the codebook, with its coarse labels (CTF) and images."""
    ctf = pipe.coarse_to_fine
    src = as_source(pipe, source, labels)
    if src.codes.ndim != 2 or src.codes.shape[1] != L:
        raise CtfgenError(f"codes: expected (N, {L}) codebook indices, got shape {src.codes.shape}")
    V = pipe.models["aux" if ctf else "baseline"].config.vocab_size
    if src.codes.size and (src.codes.min() < 0 or src.codes.max() >= V):
        raise CtfgenError(f"codes: values must lie in 0..{V - 1} (the codebook), got {src.codes.min()}..{src.codes.max()}")
    if ctf and src.coarse is None:  # an encoded image: its coarse labels are its codes' clusters
        src = replace(src, coarse=pipe.models["aux"].code_to_coarse.cpu()[torch.as_tensor(src.codes)].numpy())
    if src.images is None:
        src = replace(src, images=pipe.decode(torch.as_tensor(src.codes)))
    return src


def _edit_batch(pipe, src, idx, seeds_B, keep_codes_L, keep_layout_L, s, gibbs_sweeps: int):
    """(codes_BL, coarse_BL or None) of one batch of edits: the kept positions teacher-forced, the rest
    drawn (and swept), then the kept codes put back."""
    L = pipe.seq_len
    labels_B = torch.as_tensor(src.labels[idx])
    codes_src_BL = torch.as_tensor(src.codes[idx])
    coarse_BL = None
    if pipe.coarse_to_fine:
        ar = pipe.models["ar"]
        u_BN = sample_uniforms(seeds_B, 2 * L)  # as generate: stage 1 the first L, stage 2 the rest
        coarse_BL = generate_tokens(ar, labels_B, u_BN[:, :L], s, given_BL=torch.as_tensor(src.coarse[idx]),
                                    keep_L=keep_layout_L, step_fn=pipe._decode_step(ar))
        if gibbs_sweeps:
            coarse_BL = run_gibbs(ar, coarse_BL, labels_B, ~keep_layout_L, seeds_B, s, sweeps=gibbs_sweeps)
        fine_BL = pipe.stage2(coarse_BL, labels_B, u_BN[:, L:], s)
    else:
        m = pipe.models["baseline"]
        fine_BL = generate_tokens(m, labels_B, sample_uniforms(seeds_B, L), s, given_BL=codes_src_BL,
                                  keep_L=keep_codes_L, step_fn=pipe._decode_step(m))
        if gibbs_sweeps:
            fine_BL = run_gibbs(m, fine_BL, labels_B, ~keep_codes_L, seeds_B, s, sweeps=gibbs_sweeps)
    codes_BL = torch.where(keep_codes_L.to(fine_BL.device), codes_src_BL.to(fine_BL.device), fine_BL)
    return codes_BL, coarse_BL


def edit(pipe, source, *, kind: str, n: int = 1, labels=None, keep_tokens: int | None = None,
         region: Sequence[int] | None = None, mode: str = "layout", gibbs_sweeps: int = 0, seed: int = 0,
         batch_size: int = 64, progress: bool = False, **settings: Any) -> Edits:
    """Run one edit (`kind` in EDITS) on every source image, n times each; see the module docstring
    and `Pipeline.vary` / `complete` / `inpaint`. Checks every argument before drawing anything."""
    _check_edit(pipe, kind, n, mode, gibbs_sweeps, batch_size)
    ctf = pipe.coarse_to_fine
    s = pipe.settings(**settings)
    L, grid = pipe.seq_len, pipe.models[next(iter(pipe.models))].config.grid
    record: dict[str, Any] = {"edit": kind, "pipeline": pipe.type, "n": int(n), "seed": int(seed)}
    keep_codes, keep_layout = _kept_positions(kind, L, grid, keep_tokens, region, mode, record)
    if gibbs_sweeps and (keep_layout.all() or kind == "vary"):
        raise CtfgenError("gibbs_sweeps: only edits that redraw the causal model's tokens (complete, inpaint mode "
                          "'layout') have a full conditional to sweep")
    if gibbs_sweeps:
        record["gibbs_sweeps"] = int(gibbs_sweeps)
    src = _checked_source(pipe, source, labels, L)
    t0 = time.perf_counter()
    source_index = np.repeat(np.arange(len(src.codes)), n)
    seeds = [sample_seed(seed, m) for m in range(len(source_index))]
    keep_codes_L, keep_layout_L = torch.as_tensor(keep_codes), torch.as_tensor(keep_layout)
    codes, coarse, images = [], [], []
    starts = range(0, len(source_index), batch_size)
    if progress and len(starts) > 1:
        from ..progress import progress_bar

        starts = progress_bar(starts, desc=f"{kind} ({pipe.type})")
    try:
        for b in starts:
            codes_BL, coarse_BL = _edit_batch(pipe, src, source_index[b:b + batch_size], seeds[b:b + batch_size],
                                              keep_codes_L, keep_layout_L, s, gibbs_sweeps)
            if coarse_BL is not None:
                coarse.append(coarse_BL.cpu())
            codes.append(codes_BL.cpu())
            images.append(pipe.decode(codes_BL))
    finally:
        pipe.clear_caches()
    codes_np = torch.cat(codes).numpy() if codes else np.zeros((0, L), np.int64)
    samples = Samples(images=np.concatenate(images) if images else np.zeros((0, 1, 1, 1), np.uint8), codes=codes_np,
                      labels=src.labels[source_index], seeds=seeds, settings=s,
                      coarse=(torch.cat(coarse).numpy() if coarse else np.zeros((0, L), np.int64)) if ctf else None)
    record["kept_tokens"] = int(keep_codes.sum())
    return Edits(samples=samples, source=src, source_index=source_index, kept_L=keep_codes, record=record,
                 seconds=time.perf_counter() - t0)
