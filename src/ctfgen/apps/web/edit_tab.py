"""The Edit tab of `ctfgen serve` (Gradio): pick a source (image #k of the Generate tab, or an uploaded
file), an edit (detail variations, completion from the top rows, resampling of a rectangle), see the
coarse-label map before and after and CTF's and the baseline's edits side by side.

Element ids: inputs "edit-source", "edit-index", "edit-upload", "edit-kind", "edit-keep-rows",
"edit-top", "edit-left", "edit-height", "edit-width", "edit-mode", "edit-count", "edit-seed"; the
button "edit-run"; outputs "edit-status", "edit-before" (the source, its redrawn area tinted red, and
its coarse map), "edit-ctf", "edit-coarse-after" and "edit-baseline".
"""
from __future__ import annotations

import html
import sys
import traceback

from ...errors import CtfgenError
from .edit_service import EditRequest, EditResult, run_edit
from .service import PageRequest, PageService

HELP = """Edit image **#k** of the Generate tab (its class, seed and settings: the same image) or an uploaded
image file (the tokenizer's size, no transparency; edited under the Generate tab's class).
**vary**: keep the coarse-label map, redraw stage 2 (CTF only). **complete**: keep the top rows of tokens,
draw the rest. **inpaint**: redraw a rectangle of the token grid (*layout*: coarse labels in raster
order, then details; *detail*: CTF's stage 2 only). Positions outside the red area keep their codes."""


def edit_outputs(service: PageService, req: EditRequest, files) -> tuple[list, list, list, list, str]:
    """(before, CTF edits, coarse maps after, baseline edits, status Markdown); bad input and failures
    become a message in the status, never an exception."""
    files.prune()
    try:
        r: EditResult = run_edit(service, req)
    except CtfgenError as e:
        return [], [], [], [], f"**Error:** {html.escape(str(e))}"
    except Exception as e:  # the page gets one line; the server log gets the traceback
        traceback.print_exc(file=sys.stderr)
        return [], [], [], [], f"**Error:** the edit failed ({type(e).__name__}: {html.escape(str(e))}); see the server log"
    n = len(r.ctf_images)
    caps = [f"#{i + 1}" for i in range(n)]
    kept = r.record.get("kept_tokens")
    status = (f"{r.kind}: {n} edit{'s' if n > 1 else ''} of class {html.escape(service.label_of(r.label))}, "
              f"{kept} of {service.ctf.seq_len} tokens kept. CTF: {r.ctf_seconds:.2f} s")
    if r.baseline_seconds is not None:
        status += f" · baseline: {r.baseline_seconds:.2f} s (same source and seeds)"
    if r.note:
        status += f" · {html.escape(r.note)}"
    before = files.gallery([r.source[0], r.coarse_before[0]], ["source (red: redrawn)", "coarse map before"])
    base = files.gallery(r.baseline_images, caps) if r.baseline_images is not None else []
    return before, files.gallery(r.ctf_images, caps), files.gallery(r.coarse_after, caps), base, status


def edit_tab(service: PageService, files, sampling_inputs: list) -> None:
    """Lay out the tab inside the current gr.Tab and wire its button; `sampling_inputs`: the Generate
    tab's class, count, seed and settings components (PageRequest's order)."""
    from .app import import_gradio

    gr = import_gradio()
    grid = service.ctf.models["ar"].config.grid
    d = EditRequest()
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            gr.Markdown(HELP)
            source = gr.Radio(["generated", "upload"], value=d.source, label="source", elem_id="edit-source")
            index = gr.Number(d.index, label=f"generated image # (1 to {service.max_images})", elem_id="edit-index")
            upload = gr.File(label="image file (PNG)", file_types=["image"], type="filepath", elem_id="edit-upload")
            kind = gr.Radio(["vary", "complete", "inpaint"], value=d.kind, label="edit", elem_id="edit-kind")
            keep_rows = gr.Number(min(d.keep_rows, grid // 2), label=f"complete: rows to keep (0 to {grid})",
                                  elem_id="edit-keep-rows")
            with gr.Row():
                top = gr.Number(grid // 4, label="top", elem_id="edit-top", min_width=60)
                left = gr.Number(grid // 4, label="left", elem_id="edit-left", min_width=60)
                height = gr.Number(max(1, grid // 2), label="height", elem_id="edit-height", min_width=60)
                width = gr.Number(max(1, grid // 2), label="width", elem_id="edit-width", min_width=60)
            mode = gr.Radio(["layout", "detail"], value=d.mode, label="inpaint: resample", elem_id="edit-mode")
            with gr.Row():
                count = gr.Number(min(d.count, service.max_images), label=f"edits (1 to {service.max_images})",
                                  elem_id="edit-count", min_width=100)
                seed = gr.Number(d.edit_seed, label="edit seed", elem_id="edit-seed", min_width=100)
            button = gr.Button("Edit", variant="primary", elem_id="edit-run")
        with gr.Column(scale=3):
            status = gr.Markdown(f"The rectangle is in tokens: the grid has {grid} x {grid}.", elem_id="edit-status")
            before = gr.Gallery(label="before: source · coarse-label map", elem_id="edit-before", format="png",
                                columns=4, object_fit="contain")
            with gr.Row():
                ctf = gr.Gallery(label="CTF", elem_id="edit-ctf", format="png", columns=4, object_fit="contain")
                base = gr.Gallery(label="baseline (LlamaGen), same seeds", elem_id="edit-baseline", format="png",
                                  columns=4, object_fit="contain", visible=service.baseline is not None)
            after = gr.Gallery(label="CTF coarse-label maps after", elem_id="edit-coarse-after", format="png",
                               columns=4, object_fit="contain")
    fields = [source, index, upload, kind, keep_rows, top, left, height, width, mode, count, seed]
    n = len(fields)

    def run(*values):
        return edit_outputs(service, EditRequest(*values[:n], sampling=PageRequest(*values[n:])), files)

    button.click(run, fields + sampling_inputs, [before, ctf, after, base, status], api_name="edit",
                 concurrency_limit=1)
