"""`ctfgen sample` (images from CTF or the baseline) and `ctfgen pipeline make` (a pipeline folder)."""
from __future__ import annotations

import argparse

from ...errors import CtfgenError
from ._util import add_config_flags, add_device_args, add_group, class_list, given_flags, positive_int, seed_int

ORDER = 70

SAMPLE_EPILOG = """Models: --pipeline DIR, or --tokenizer DIR with --ar DIR --aux DIR (CTF) or --baseline DIR.
Outputs (any of): --grid a.png (a row per class), --png-dir DIR (PNGs + labels.json + manifest),
--npz a.npz (ADM format: arr_0 uint8 N x H x W x 3, labels) for `ctfgen eval`,
--coarse-grid c.png (CTF only: coarse-label map, coarse image, final image of every sample).
Every sample has its own seed (from --seed and its index), so the images do not depend on
--batch-size or on the number of processes: torchrun --nproc_per_node N -m ctfgen sample ..."""


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images (CTF or baseline) to a grid, PNG folder and/or .npz",
                       description="Generate class-conditional images with CTF (stage 1 + stage 2) or the baseline.",
                       epilog=SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    g = p.add_argument_group("what to generate")
    g.add_argument("--classes", default="all", type=class_list,
                   help="comma-separated class ids, or 'all' (default)")
    g.add_argument("--per-class", type=positive_int, default=4, metavar="N", help="images per class (default: 4)")
    g.add_argument("--seed", type=seed_int, default=0, help="global seed; sample i uses a seed derived from (seed, i)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    _add_sampling_args(p)
    o = p.add_argument_group("outputs")
    o.add_argument("--grid", metavar="PNG", help="one PNG, a row per class")
    o.add_argument("--grid-scale", type=positive_int, default=2, help="pixel repeat of the grid (default: 2)")
    o.add_argument("--png-dir", metavar="DIR", help="a PNG per image with labels.json and manifest.json")
    o.add_argument("--npz", metavar="PATH", help="ADM-format .npz for evaluation")
    o.add_argument("--coarse-grid", metavar="PNG",
                   help="CTF only: per sample its coarse-label map, coarse image and final image, a row per class "
                        "(scaled by --grid-scale)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --png-dir")
    add_device_args(p)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="model dtype (bf16: for GPUs)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, choices=["inductor", "cudagraph"],
                   help="compiled decoding (GPUs): inductor = torch.compile reduce-overhead (the default of a bare "
                        "--compile), cudagraph = the step captured into a CUDA graph, no compiler (docs/GPU.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_sample)

    group = add_group(sub, "pipeline", help="pipeline folders: tokenizer + models, checked to belong together")
    m = group.add_parser("make", help="write a pipeline folder for CTFPipeline/BaselinePipeline.from_pretrained",
                         description="Check that the tokenizer and model folders belong together (same tokenizer, "
                                     "same coarse map for both stages) and write a pipeline folder.")
    m.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    _add_model_args(m, pipeline=False)
    _add_stage2_args(m.add_argument_group("a parameter-free stage 2 (instead of --aux)"))
    m.add_argument("--reference", action="store_true",
                   help="record the folders' paths instead of copying their weights")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_sampling_args(m, title="sampling defaults stored in the pipeline")
    m.set_defaults(func=_run_make)

    c = group.add_parser("card", help="rewrite a pipeline folder's model card (README.md) with measured metrics",
                         description="Rewrite DIR/README.md, the model card with the Hugging Face Hub's front matter, "
                                     "from the folder's manifests and the given `ctfgen eval` results of samples its "
                                     "models made (each quoted with the command that measured it); results of other "
                                     "models' samples are refused. Only README.md changes.")
    c.add_argument("folder", metavar="DIR", help="a local pipeline folder (`ctfgen pipeline make`)")
    c.add_argument("--eval", action="append", default=[], metavar="JSON",
                   help="a `ctfgen eval` result of this pipeline's samples; repeat for more (default: none, no metrics)")
    c.add_argument("--license", metavar="ID", help="the Hub license id, e.g. mit or apache-2.0 (default: not stated)")
    c.set_defaults(func=_run_card)


def _add_model_args(p, *, pipeline: bool = True) -> None:
    g = p.add_argument_group("models")
    if pipeline:
        g.add_argument("--pipeline", metavar="DIR", help="a pipeline folder (from `ctfgen pipeline make`), or a Hub "
                       "repository id user/name already in the local Hugging Face cache")
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder")
    g.add_argument("--ar", metavar="DIR", help="stage-1 model folder (`ctfgen train ar`)")
    g.add_argument("--aux", metavar="DIR", help="stage-2 model folder (`ctfgen train aux`)")
    g.add_argument("--baseline", metavar="DIR", help="baseline model folder (`ctfgen train baseline`)")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights even when the run kept an EMA")


def _add_stage2_args(g) -> None:
    """--stage2 RULE with the coarse map and training codes it is made from (models/member_prior.py)."""
    from ...models.config import PRIOR_RULES

    g.add_argument("--stage2", default="model", choices=("model", *PRIOR_RULES),
                   help="CTF's stage 2: 'model' (default: the trained --aux folder), or a parameter-free prior: "
                        "'uniform' (every member of the cluster equally likely) or 'frequency' (members by their "
                        "count in --train-codes), made from --coarse-map and written into the pipeline")
    g.add_argument("--coarse-map", metavar="DIR", help="the coarse map (`ctfgen cluster`) of --stage2 uniform/frequency")
    g.add_argument("--train-codes", metavar="DIR", help="the training code store whose counts --stage2 frequency uses")


def _prior_stage2(args):
    """The MemberPriorArtifact of `--stage2 RULE --coarse-map DIR [--train-codes DIR]`."""
    from ...cluster import CoarseMap
    from ...codes import CodeStore
    from ...artifacts import check_made_from
    from ...models.member_prior import MemberPriorArtifact
    from ...tokenizer.artifact import TokenizerArtifact

    if args.aux:
        raise CtfgenError(f"--stage2 {args.stage2} replaces --aux: give one of them")
    if not args.coarse_map:
        raise CtfgenError(f"--stage2 {args.stage2} needs --coarse-map DIR (the map stage 1 was trained with)")
    cmap = CoarseMap.load(args.coarse_map)
    # before the prior is made from it: a map of another tokenizer is the map's fault, not "the aux model's"
    check_made_from(f"coarse map {args.coarse_map} (--coarse-map) / tokenizer {args.tokenizer}",
                    TokenizerArtifact.read_manifest(args.tokenizer)["fingerprint"], cmap.tokenizer_fingerprint,
                    hint="the coarse map was made for another tokenizer")
    train = CodeStore.open(args.train_codes) if args.stage2 == "frequency" else None
    return MemberPriorArtifact.from_map(args.stage2, cmap, train_codes=train)


def _add_sampling_args(p, title: str = "sampling (defaults: the paper's for CTF, LlamaGen's for the baseline)") -> None:
    """A flag per SamplingConfig field (sample/settings.py holds each one's help and allowed values).
    They default to None: a flag overrides the pipeline's stored settings only when given."""
    from dataclasses import asdict

    from ...sample.settings import SamplingConfig

    ctf, base = asdict(SamplingConfig()), asdict(SamplingConfig.baseline())
    shown = {k: f"{ctf[k]} for CTF, {base[k]} for the baseline" for k in ctf if ctf[k] != base[k]}
    add_config_flags(p.add_argument_group(title), SamplingConfig, skip=(), unset=True, shown=shown)


def _model_dirs(args) -> dict:
    if args.ar or args.aux:
        if args.baseline or not (args.ar and args.aux):
            raise CtfgenError("CTF needs both --ar and --aux (and no --baseline)")
        return {"ar": args.ar, "aux": args.aux}
    if args.baseline:
        return {"baseline": args.baseline}
    raise CtfgenError("give --pipeline DIR, or --tokenizer with --ar and --aux (CTF) or --baseline")


def _run_make(args) -> int:
    from ...sample import SamplingConfig, make_pipeline

    if not args.tokenizer:
        raise CtfgenError("--tokenizer DIR is required")
    from ...models.member_prior import check_prior_flags

    if args.stage2 != "model" and (args.baseline or not args.ar):
        raise CtfgenError(f"--stage2 {args.stage2} is CTF's stage 2: give --ar DIR (stage 1) and no --baseline")
    check_prior_flags(args.stage2, coarse_map=args.coarse_map, train_codes=args.train_codes)
    dirs = _model_dirs(args) if args.stage2 == "model" else {"ar": args.ar, "aux": _prior_stage2(args)}
    overrides = given_flags(SamplingConfig, args)
    sampling = SamplingConfig(**overrides) if "ar" in dirs else SamplingConfig.baseline(**overrides)
    out = make_pipeline(args.out, tokenizer=args.tokenizer, copy=not args.reference, overwrite=args.overwrite,
                        sampling=sampling, **dirs)
    print(f"pipeline ({'ctf' if 'ar' in dirs else 'baseline'}) written to {out}")
    return 0


def _run_card(args) -> int:
    from pathlib import Path

    from ...sample.model_card import write_model_card
    from ...sample.pipeline_folder import PipelineFolder

    folder = Path(args.folder)
    if not folder.is_dir():  # a Hub repository in the cache is read-only: edit the folder that was pushed
        raise CtfgenError(f"{folder}: no such pipeline folder")
    card = write_model_card(folder, PipelineFolder.load(folder), evaluations=args.eval, license=args.license)
    print(f"model card written to {card} ({len(args.eval)} evaluation(s))")
    return 0


def _run_sample(args) -> int:
    import torch

    from ...dist import init_distributed, leaving_group
    from ...sample import BaselinePipeline, CTFPipeline, SamplingConfig, load_pipeline
    from ...sample.outputs import save_folder, save_grid, save_npz

    if not (args.grid or args.png_dir or args.npz or args.coarse_grid):
        raise CtfgenError("nothing to write: give --grid PNG, --png-dir DIR, --npz PATH and/or --coarse-grid PNG")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    with leaving_group(info):
        dtype = torch.bfloat16 if args.dtype == "bf16" else None
        common = dict(device=info.device, ema=False if args.no_ema else None, dtype=dtype, compile=args.compile)
        if args.pipeline:
            pipe = load_pipeline(args.pipeline, **common)
        else:
            if not args.tokenizer:
                raise CtfgenError("--tokenizer DIR is required without --pipeline")
            dirs = _model_dirs(args)
            cls = CTFPipeline if "ar" in dirs else BaselinePipeline
            pipe = cls.from_folders(tokenizer=args.tokenizer, **common, **dirs)
        if args.coarse_grid and not pipe.coarse_to_fine:
            raise CtfgenError("--coarse-grid shows stage 1 and stage 2 of CTF; this is a baseline pipeline")
        classes = list(range(pipe.num_classes)) if args.classes == "all" else args.classes
        pipe.check_labels(classes, where="--classes")
        labels = [c for c in classes for _ in range(args.per_class)]
        samples = pipe.generate(labels, seed=args.seed, batch_size=args.batch_size,
                                progress=not args.no_progress, **given_flags(SamplingConfig, args))
        if info.is_main:
            # the command goes on a model card beside the metrics of these samples (sample/model_card.py);
            # it makes the same images under torchrun or not
            extra = {"type": pipe.type, "classes": classes, "per_class": args.per_class,
                     "world_size": info.world_size, "dtype": args.dtype, "command": getattr(args, "command_line", None)}
            if args.grid:
                print(f"grid: {save_grid(args.grid, samples, scale=args.grid_scale)}")
            if args.png_dir:
                out = save_folder(args.png_dir, samples, seed=args.seed, models=pipe.fingerprints, extra=extra,
                                  overwrite=args.overwrite)
                print(f"{len(labels)} PNGs: {out}")
            if args.npz:
                out = save_npz(args.npz, samples, tokenizer=pipe.fingerprints.get("tokenizer"))
                print(f"npz: {out} ({len(labels)} images)")
            if args.coarse_grid:
                from ...sample.coarse_view import coarse_views
                from ...sample.outputs import save_coarse_grid

                views = coarse_views(pipe, samples, batch_size=args.batch_size)
                print(f"coarse grid: {save_coarse_grid(args.coarse_grid, views, samples.labels, scale=args.grid_scale)}")
    return 0
