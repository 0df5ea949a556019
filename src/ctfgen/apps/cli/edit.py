"""`ctfgen edit {vary,complete,inpaint}`: edit a generated sample or an image file with CTF (and the
baseline side by side)."""
from __future__ import annotations

import argparse
import sys

from ...errors import CtfgenError
from ._util import add_device_args, comma_list, int_range, nonneg_int, positive_int, seed_int
from .sample import _add_sampling_args

ORDER = 72

EPILOG = """Source: --image PNG (repeatable; give --class) or --sample NPZ --index I[,J..] (written by
`ctfgen sample --npz`; its codes and, for CTF, coarse labels are edited, not the decoded pixels).
The PNG must have the tokenizer's size and channel count and no alpha channel.
Output folder: edits.png (a row per source: source with the redrawn area tinted | CTF coarse map before,
coarse maps after, edits | baseline edits), source/, ctf/, baseline/ PNGs and edit.json.
Examples:
  ctfgen edit complete --pipeline runs/demo/pipeline-ctf --baseline-pipeline runs/demo/pipeline-baseline \\
      --image shirt.png --class 6 --keep-rows 4 --n 4 --out runs/edit-complete
  ctfgen edit inpaint --pipeline runs/demo/pipeline-ctf --sample s.npz --index 3 --region 2,2,4,4 --mode layout ...
  ctfgen edit vary --pipeline runs/demo/pipeline-ctf --sample s.npz --index 0,1 --n 6 --stage2-temperature 1.5 ..."""

KINDS = {
    "vary": "detail variations (CTF): keep the coarse-label map, redraw stage 2",
    "complete": "keep the first tokens in raster order (the top rows), draw the rest",
    "inpaint": "redraw a rectangle of the token grid, keep every code outside it",
}


def _region(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected TOP,LEFT,HEIGHT,WIDTH (four whole numbers, in tokens), got {text!r}")
    return values  # type: ignore[return-value]


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit an image: detail variations, completion, region resampling",
                       description="Edit generated samples or image files with CTF's two stages (and the baseline "
                                   "side by side).")
    p.set_defaults(_group_parser=p)
    kinds = p.add_subparsers(dest="subcommand", metavar="EDIT")
    for kind, help in KINDS.items():
        k = kinds.add_parser(kind, help=help, description=help[0].upper() + help[1:] + ".", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        g = k.add_argument_group("models and source")
        g.add_argument("--pipeline", required=True, metavar="DIR",
                       help="a pipeline folder (CTF; for complete and inpaint also a baseline one)")
        if kind != "vary":
            g.add_argument("--baseline-pipeline", metavar="DIR", help="a baseline pipeline folder, edited side by side")
        g.add_argument("--image", action="append", metavar="PNG", help="an image file (repeatable); needs --class")
        g.add_argument("--sample", metavar="NPZ", help="samples saved by `ctfgen sample --npz`")
        g.add_argument("--index", type=comma_list(nonneg_int), metavar="I[,J..]",
                       help="which samples of --sample (0-based)")
        g.add_argument("--class", dest="label", type=nonneg_int, metavar="C",
                       help="the class to edit under (required with --image; replaces a sample's own)")
        e = k.add_argument_group("the edit")
        e.add_argument("--n", type=positive_int, default=4 if kind == "vary" else 2,
                       help=f"edits per source image (default: {4 if kind == 'vary' else 2})")
        e.add_argument("--seed", type=seed_int, default=0, help="edit m uses a seed derived from (seed, m)")
        e.add_argument("--batch-size", type=positive_int, default=64, help="edits per batch (default: 64)")
        if kind == "complete":
            keep = e.add_mutually_exclusive_group(required=True)
            keep.add_argument("--keep-tokens", type=nonneg_int, metavar="P", help="keep the first P tokens (raster order)")
            keep.add_argument("--keep-rows", type=nonneg_int, metavar="R", help="keep the first R rows of tokens")
        if kind != "vary":
            e.add_argument("--gibbs-sweeps", type=nonneg_int, default=0, metavar="S",
                           help="then S sweeps of the exact full conditional over the redrawn tokens "
                                "(sees the kept tokens after each one; cost: tokens x vocabulary forward passes per sweep)")
        if kind == "inpaint":
            e.add_argument("--region", type=_region, required=True, metavar="T,L,H,W",
                           help="top, left, height, width of the rectangle, in tokens")
            e.add_argument("--mode", choices=["layout", "detail"], default="layout",
                           help="layout: redraw coarse labels (CTF) / codes (baseline) in raster order, then details; "
                                "detail (CTF): redraw only stage 2 under the kept coarse labels (default: layout)")
        _add_sampling_args(k)
        o = k.add_argument_group("output")
        o.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
        o.add_argument("--scale", type=int_range(1, 32), default=4, help="pixel repeat of edits.png (default: 4)")
        o.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        add_device_args(k)
        k.add_argument("--no-ema", action="store_true", help="use the raw weights even when the run kept an EMA")
        k.set_defaults(func=_run, edit_kind=kind)


def _run(args) -> int:
    from ...sample import SamplingConfig, load_pipeline
    from ...sample.edit_outputs import save_edits
    from ...sample.edit_sources import npz_source, png_source
    from ._util import given_flags, setup_device

    if bool(args.image) == bool(args.sample):
        raise CtfgenError("give the source: --image PNG (with --class) or --sample NPZ --index I")
    if args.sample and not args.index:
        raise CtfgenError("--sample needs --index I[,J..]: which of its samples to edit")
    if args.image and args.label is None:
        raise CtfgenError("--image needs --class C: the class to edit the image under")
    device = setup_device(args)
    ema = False if args.no_ema else None
    pipe = load_pipeline(args.pipeline, device=device, ema=ema)
    base = None
    if getattr(args, "baseline_pipeline", None):
        if not pipe.coarse_to_fine:
            raise CtfgenError("--baseline-pipeline goes with a CTF --pipeline; this one is a baseline pipeline")
        base = load_pipeline(args.baseline_pipeline, device=device, ema=ema)
        if base.coarse_to_fine:
            raise CtfgenError(f"--baseline-pipeline: {args.baseline_pipeline} is a {base.type!r} pipeline")
    if args.sample:
        index = [int(t) for t in args.index.split(",") if t.strip()]
        source = npz_source(args.sample, index, tokenizer=pipe.fingerprints.get("tokenizer"))
    else:
        source = png_source(pipe, args.image, args.label)
    kw = dict(n=args.n, seed=args.seed, batch_size=args.batch_size, **given_flags(SamplingConfig, args))
    if args.label is not None:
        kw["labels"] = args.label
    if args.edit_kind == "complete":
        grid = pipe.models[next(iter(pipe.models))].config.grid
        if args.keep_rows is not None and args.keep_rows > grid:
            raise CtfgenError(f"--keep-rows: {args.keep_rows} is more than the {grid} rows of the token grid")
        keep = args.keep_tokens if args.keep_tokens is not None else args.keep_rows * grid
        kw.update(keep_tokens=keep, gibbs_sweeps=args.gibbs_sweeps)
    elif args.edit_kind == "inpaint":
        kw.update(region=args.region, gibbs_sweeps=args.gibbs_sweeps)
    if base is not None and kw.get("gibbs_sweeps"):  # a user waiting on a silent run deserves to know why
        print(f"note: the baseline's Gibbs sweeps score all {base.models['baseline'].config.vocab_size} codes at each "
              f"redrawn position (CTF's stage 1: its coarse labels only); expect it to take far longer than CTF's",
              file=sys.stderr, flush=True)
    edits = {}
    if args.edit_kind == "inpaint":
        edits[pipe.type] = pipe.inpaint(source, mode=args.mode, **kw)
        if base is not None:  # the baseline's one way: raster order
            edits["baseline"] = base.inpaint(source, mode="layout", **kw)
    else:
        edits[pipe.type] = getattr(pipe, args.edit_kind)(source, **kw)
        if base is not None:
            edits["baseline"] = base.complete(source, **kw)
    models = {name: p.fingerprints for name, p in ((pipe.type, pipe),
                                                    ("baseline", base)) if p is not None}
    out = save_edits(args.out, ctf_pipe=pipe if pipe.coarse_to_fine else None, ctf=edits.get("ctf"),
                     baseline=edits.get("baseline"), models=models, scale=args.scale, overwrite=args.overwrite)
    for name, e in edits.items():
        print(f"{name}: {len(e.samples.codes)} edits ({e.record['kept_tokens']} of {pipe.seq_len} tokens kept) "
              f"in {e.seconds:.2f} s")
    print(f"written to {out} (figure: {out / 'edits.png'})")
    return 0
