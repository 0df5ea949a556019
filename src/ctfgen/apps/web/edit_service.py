"""The Edit tab of `ctfgen serve`, apart from the web framework: read an edit request as typed on the
page, refuse bad input with a message naming the field, run the edit with CTF (and the baseline on
the same source and seeds) and return the images the tab shows (sample/editing.py does the edits).

The source is an uploaded image file (checked like `ctfgen edit --image`: the tokenizer's size and
channels, no alpha) or image #k of the Generate tab: regenerated from that tab's class, seed and
settings, which give the same image (per-sample seeds), so the page keeps no state between requests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import CtfgenError
from .service import PageRequest, PageService, _whole

KINDS = ("vary", "complete", "inpaint")
SOURCES = ("generated", "upload")


@dataclass
class EditRequest:
    """The Edit tab's fields as they arrive; `sampling` is the Generate tab's request (class, seed,
    settings), which both names a generated source and gives the edit its sampling settings."""

    source: Any = "generated"  # "generated" or "upload"
    index: Any = 1  # 1-based: image #k of the Generate tab
    upload: Any = None  # a file path (Gradio hands the uploaded file over by path)
    kind: Any = "complete"
    keep_rows: Any = 4
    top: Any = 2
    left: Any = 2
    height: Any = 4
    width: Any = 4
    mode: Any = "layout"
    count: Any = 3
    edit_seed: Any = 0
    sampling: PageRequest = field(default_factory=PageRequest)


@dataclass
class EditResult:
    kind: str
    label: int
    source: np.ndarray  # uint8 (1, H, W, 3): the source, its redrawn area tinted
    coarse_before: np.ndarray | None  # uint8 (1, H, W, 3) CTF coarse-label map of the source
    ctf_images: np.ndarray  # uint8 (n, H, W, 3)
    coarse_after: np.ndarray  # uint8 (n, H, W, 3) CTF coarse-label maps of the edits
    ctf_seconds: float
    baseline_images: np.ndarray | None = None  # uint8 (n, H, W, 3)
    baseline_seconds: float | None = None
    note: str = ""  # what the baseline did instead, when it cannot do the same edit
    record: dict[str, Any] = field(default_factory=dict)


def run_edit(service: PageService, req: EditRequest) -> EditResult:
    """Check `req`, run the edit, return what the tab shows; CtfgenError names the first bad field."""
    from ...sample.edit_outputs import coarse_maps, redrawn_overlay, rgb
    from ...sample.edit_sources import png_source, samples_source

    label, _, seed, settings = service.check(PageRequest(**{**vars(req.sampling), "count": 1}))
    source = str(req.source or "").strip()
    if source not in SOURCES:
        raise CtfgenError(f"source: pick one of {', '.join(SOURCES)}, got {source!r}")
    kind = str(req.kind or "").strip()
    if kind not in KINDS:
        raise CtfgenError(f"edit: pick one of {', '.join(KINDS)}, got {kind!r}")
    count = _whole("edits", req.count)
    if not 1 <= count <= service.max_images:
        raise CtfgenError(f"edits: {count} is outside 1..{service.max_images} (set by `ctfgen serve --max-images`)")
    edit_seed = _whole("edit seed", req.edit_seed)
    if edit_seed < 0:
        raise CtfgenError(f"edit seed: must be >= 0, got {edit_seed}")
    grid = service.ctf.models["ar"].config.grid
    kw: dict[str, Any] = dict(n=count, seed=edit_seed, batch_size=service.batch_size, **settings)
    if kind == "complete":
        rows = _whole("rows to keep", req.keep_rows)
        if not 0 <= rows <= grid:
            raise CtfgenError(f"rows to keep: {rows} is outside 0..{grid} (the token grid has {grid} rows)")
        kw["keep_tokens"] = rows * grid
    elif kind == "inpaint":
        kw["region"] = tuple(_whole(name, getattr(req, name)) for name in ("top", "left", "height", "width"))
        mode = str(req.mode or "").strip()
        if mode not in ("layout", "detail"):
            raise CtfgenError(f"resample: pick layout or detail, got {mode!r}")
        kw["mode"] = mode
    with service._lock:
        if source == "upload":
            if not req.upload:
                raise CtfgenError("upload: choose an image file first (or pick a generated image)")
            src = png_source(service.ctf, [req.upload], label)
        else:
            index = _whole("generated image #", req.index)
            if not 1 <= index <= service.max_images:
                raise CtfgenError(f"generated image #: {index} is outside 1..{service.max_images}")
            drawn = service.ctf.generate([label] * index, seed=seed, batch_size=service.batch_size, **settings)
            src = samples_source(drawn, [index - 1])
        ctf = getattr(service.ctf, kind)(src, **kw)
        base, note = None, ""
        if service.baseline is not None:
            if kind == "vary":
                note = "the baseline has no detail variations (no second stage)"
            else:
                bkw = {**kw, "mode": "layout"} if kind == "inpaint" else kw
                if kind == "inpaint" and kw["mode"] == "detail":
                    note = "the baseline resamples the region in raster order (it has no detail-only stage)"
                base = getattr(service.baseline, kind)(src, **bkw)
    before, after = coarse_maps(service.ctf, ctf)
    return EditResult(kind=kind, label=label, source=redrawn_overlay(ctf.source.images, ctf.kept_L),
                      coarse_before=before, ctf_images=rgb(ctf.samples.images), coarse_after=after,
                      ctf_seconds=ctf.seconds, baseline_images=None if base is None else rgb(base.samples.images),
                      baseline_seconds=None if base is None else base.seconds, note=note, record=ctf.record)
