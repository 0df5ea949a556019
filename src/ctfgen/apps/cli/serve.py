"""`ctfgen serve`: a local web page to sample CTF (and the baseline) and see coarse become fine."""
from __future__ import annotations

import argparse

from ._util import add_device_args, int_range, positive_int, setup_device

ORDER = 75

EPILOG = """Needs the optional extra: pip install -e ".[web]" (Gradio). Works offline: no analytics,
no fonts or scripts from other hosts. Requests are queued and served one at a time.
Example: ctfgen serve --pipeline runs/demo/pipeline-ctf --baseline-pipeline runs/demo/pipeline-baseline"""


def register(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: pick a class, sample, see coarse become fine",
                       description="Serve a web page that samples a CTF pipeline (and a baseline for the same "
                                   "seeds) and shows each image's coarse-label map, coarse image and final image.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, metavar="DIR",
                   help="a CTF pipeline folder (`ctfgen pipeline make`), or a Hub repository id user/name in the "
                        "local Hugging Face cache")
    p.add_argument("--baseline-pipeline", metavar="DIR", help="a baseline pipeline folder (or cached Hub repository "
                   "id), shown side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=7860, help="port (default: 7860)")
    p.add_argument("--max-images", type=positive_int, default=8, metavar="N", help="most images one request may ask for (default: 8)")
    p.add_argument("--queue-size", type=positive_int, default=64, metavar="N",
                   help="requests that may wait; more are refused until the queue drains (default: 64)")
    p.add_argument("--class-names", metavar="A,B,...|FILE",
                   help="class names: comma-separated, or a classes.json (e.g. the code store's, runs/codes/classes.json) "
                        "(default: the names in the tokenizer's classes.json, written by `tokenizer train`; else the ids)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when the run kept an EMA")
    add_device_args(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ...sample import load_pipeline
    from ..web import PageService
    from ..web.app import import_gradio, serve

    import_gradio()  # a missing extra is reported before the models load
    device = setup_device(args)
    ema = False if args.no_ema else None
    ctf = load_pipeline(args.pipeline, device=device, ema=ema)
    baseline = load_pipeline(args.baseline_pipeline, device=device, ema=ema) if args.baseline_pipeline else None
    names = _class_names(args.class_names)
    service = PageService(ctf, baseline, class_names=names, max_images=args.max_images)
    serve(service, host=args.host, port=args.port, queue_size=args.queue_size)
    return 0


def _class_names(text: str | None) -> list[str] | None:
    """--class-names: a classes.json file's names, or the comma-separated list."""
    from pathlib import Path

    if not text:
        return None
    if text.endswith(".json") or Path(text).is_file():
        from ...data.classes import read_class_names

        return read_class_names(text)
    return text.split(",")
