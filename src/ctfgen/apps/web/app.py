"""The Gradio page of `ctfgen serve`: pick a class and the sampling settings, press Generate, see CTF's
images (and the baseline's for the same seeds) and, for each CTF image, its coarse-label map,
coarse image and final image.

Offline by design: analytics off (GRADIO_ANALYTICS_ENABLED=False), a theme of the browser's own
fonts (Gradio's default theme loads one from a font service), no share link, no server-side render.
Requests wait in Gradio's queue and run one at a time.
"""
from __future__ import annotations

import hashlib
import html
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ...errors import CtfgenError
from .edit_tab import edit_tab
from .service import PageRequest, PageResult, PageService

TITLE = "ctfgen: coarse-to-fine generation"
INTRO = """# ctfgen: coarse-to-fine generation
Stage 1 draws a **coarse label** (a cluster of the tokenizer's codebook) for every token, stage 2 picks
a code inside each cluster. Below, for each CTF image: its coarse-label map (one colour per cluster),
the coarse image (every token decoded from its cluster's most central code) and the final image."""


def page_css(service: PageService) -> str:
    """Small images shown large without blur, galleries as tall as their images (not a fixed 450 px),
    columns that fit the width, and triplet thumbnails in the triplets' own aspect ratio."""
    r = service.resolution
    return f"""
#ctf img, #baseline img, #coarse-to-fine img, [id^=edit-] img {{ image-rendering: pixelated; }}
.gallery-container .grid-wrap.fixed-height {{ height: auto !important; min-height: 0 !important; }}
.gallery-container .grid-container {{ grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
  padding-top: 26px; }}
#coarse-to-fine .thumbnail-item {{ aspect-ratio: {3 * r + 2} / {r} !important; height: auto !important; }}
"""



def import_gradio():
    """The `gradio` module, imported with Gradio's usage analytics off (unless GRADIO_ANALYTICS_ENABLED
    is set already).
    Raises CtfgenError naming the extra to install when Gradio is missing, so a command can call it
    first and fail before it loads any model."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise CtfgenError("ctfgen serve needs Gradio, an optional dependency: pip install -e '.[web]'") from None
    return gr


class ImageFiles:
    """PNG files for the galleries, named by their content and written atomically.

    Gradio saves arrays it is handed under a name from their content by rewriting the file each time,
    so two requests with the same images (the defaults, say) could truncate a file another client is
    still downloading. Files handed over by path are copied into its cache once and reused, so the
    page writes its own. Files unused for `max_age_s` are removed at the next request.
    """

    def __init__(self, folder: str | Path | None = None, max_age_s: float = 3600.0):
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ctfgen-serve-")
            folder = self._tmp.name
        self.folder, self.max_age_s = Path(folder), max_age_s
        self.folder.mkdir(parents=True, exist_ok=True)

    def prune(self) -> None:
        old = time.time() - self.max_age_s
        for f in self.folder.glob("*.png"):
            try:
                if f.stat().st_mtime < old:
                    f.unlink()
            except FileNotFoundError:
                pass

    def path(self, image_HWC) -> str:
        from ...artifacts import atomic_write_bytes
        from ...sample.outputs import png_bytes

        data = png_bytes(image_HWC)
        f = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if f.is_file():
            os.utime(f)  # in use again: not pruned yet
        else:
            atomic_write_bytes(f, data)
        return str(f)

    def gallery(self, images, captions) -> list[tuple[str, str]]:
        return [(self.path(im), cap) for im, cap in zip(images, captions)]


def page_outputs(service: PageService, req: PageRequest, files: ImageFiles) -> tuple[list, list, list, str]:
    """(CTF gallery, baseline gallery, coarse-to-fine gallery, status Markdown) for one request; bad
    input and failures become a message in the status, never an exception."""
    files.prune()
    try:
        r: PageResult = service.generate(req)
    except CtfgenError as e:
        return [], [], [], f"**Error:** {html.escape(str(e))}"
    except Exception as e:  # the page gets one line; the server log gets the traceback
        traceback.print_exc(file=sys.stderr)
        return [], [], [], f"**Error:** generation failed ({type(e).__name__}: {html.escape(str(e))}); see the server log"
    n = len(r.seeds)
    caps = [f"#{i + 1}" for i in range(n)]
    status = (f"{n} image{'s' if n > 1 else ''} of class {html.escape(service.label_of(r.label))}. "
              f"CTF: {r.ctf_seconds:.2f} s")
    if r.baseline_images is not None:
        status += f" · baseline: {r.baseline_seconds:.2f} s (same seeds, stage-1 settings)"
    steps = files.gallery(r.triplets, caps)
    base = files.gallery(r.baseline_images, caps) if r.baseline_images is not None else []
    return files.gallery(r.ctf_images, caps), base, steps, status


def build_page(service: PageService):
    """The gr.Blocks page (not launched), two tabs. Generate: inputs "class", "count", "seed", "guidance",
    "temperature", "top-k", "top-p", "stage2-temperature"; the button "generate"; outputs "status",
    "ctf", "baseline" and "coarse-to-fine". Edit: see apps/web/edit_tab.py (it reads the Generate tab's
    class, seed and settings)."""
    gr = import_gradio()
    d = service.defaults()
    files = ImageFiles()
    # Gradio's copies of the images are removed an hour after they were made, like ours
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(INTRO)
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    # custom values allowed: an id or name typed in is checked like any other input
                    cls = gr.Dropdown(service.class_choices(), value=str(d.class_id), label="class",
                                      allow_custom_value=True, elem_id="class")
                    with gr.Row():
                        count = gr.Number(d.count, label=f"images (1 to {service.max_images})", elem_id="count",
                                          min_width=100)
                        seed = gr.Number(d.seed, label="seed", elem_id="seed", min_width=100)
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Row():
                        guidance = gr.Number(d.guidance_scale, label="guidance scale (1 = off)", elem_id="guidance",
                                             min_width=100)
                        temperature = gr.Number(d.temperature, label="temperature", elem_id="temperature",
                                                info="stage 1 and baseline", min_width=100)
                    with gr.Row():
                        top_k = gr.Number(d.top_k, label="top-k (0 = off)", elem_id="top-k", min_width=100)
                        top_p = gr.Number(d.top_p, label="top-p (1 = off)", elem_id="top-p", min_width=100)
                    stage2 = gr.Number(d.stage2_temperature, label="stage-2 temperature", elem_id="stage2-temperature")
                    inputs = [cls, count, seed, guidance, temperature, top_k, top_p, stage2]
                with gr.Column(scale=3):
                    status = gr.Markdown("Pick a class and press Generate.", elem_id="status")
                    with gr.Row():
                        ctf = gr.Gallery(label="CTF", elem_id="ctf", format="png", columns=4, object_fit="contain")
                        base = gr.Gallery(label="baseline (LlamaGen), same seeds", elem_id="baseline", format="png",
                                          columns=4, object_fit="contain", visible=service.baseline is not None)
                    steps = gr.Gallery(label="CTF, coarse to fine: coarse-label map · coarse image · final image",
                                       elem_id="coarse-to-fine", format="png", columns=2, object_fit="contain")
        with gr.Tab("Edit", elem_id="tab-edit"):
            edit_tab(service, files, inputs)

        def run(*values):
            return page_outputs(service, PageRequest(*values), files)

        button.click(run, inputs, [ctf, base, steps, status], api_name="generate", concurrency_limit=1)
    return page


def serve(service: PageService, *, host: str = "127.0.0.1", port: int = 7860, queue_size: int = 64,
          block: bool = True):
    """Launch the page; with block=False return the running gr.Blocks (close() stops it)."""
    gr = import_gradio()
    if queue_size < 1:
        raise CtfgenError(f"--queue-size must be >= 1, got {queue_size}")
    page = build_page(service)
    # requests past queue_size get "queue full" from Gradio rather than piling up without bound
    page.queue(default_concurrency_limit=1, max_size=queue_size)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    theme=theme, css=page_css(service), footer_links=["api"], ssr_mode=False, mcp_server=False,
                    enable_monitoring=False, quiet=True)
    except OSError as e:
        raise CtfgenError(f"cannot serve on {host}:{port}: {e}") from None
    print(f"ctfgen serve: {page.local_url} (Ctrl+C stops)", flush=True)
    if block:
        page.block_thread()  # until Ctrl+C, then closes the server
    return page
