"""`ctfgen tokenizer train|import|report` and `ctfgen encode`."""
from __future__ import annotations

import json
from dataclasses import replace

from ...data import VIEW_MODES
from ...tokenizer.config import PRESET_NAMES as TOKENIZER_PRESETS
from ...tokenizer.config import LLAMAGEN_NAMES as VQ_NAMES
from ...tokenizer.config import PRESETS
from ._util import (
    add_command,
    add_config_flags,
    add_group,
    config_from_args,
    data_config,
    float_range,
    given_flags,
    nonempty,
    nonneg_int,
    positive_int,
    set_option_help,
    setup_device,
)

ORDER = 10


def register(sub) -> None:
    from ...tokenizer.config import TokenizerTrainConfig, VQConfig
    from ...train.config import RunOptions

    tok = add_group(sub, "tokenizer", "train, import or inspect a VQ tokenizer (images <-> token grids)")

    p = add_command(tok, "train", _train, data=True, device=True, help="train a VQ tokenizer on a dataset",
                    description="Train a VQ tokenizer (LlamaGen's architecture family) with reconstruction, "
                                "codebook and commitment losses and dead-code restarts; report test-split PSNR, "
                                "codebook usage and perplexity; save a tokenizer folder with a reconstruction grid. "
                                "Checkpoints go to --out: rerun the same command to resume.")
    set_option_help(p, "--channels", "1 grey, 3 RGB; images are converted (default: the data's: 3 when its images "
                                     "are in colour, printed when it differs from the preset's)")
    set_option_help(p, "--resolution", "image size; other sizes are centre-cropped and resized (default: the preset's)")
    p.add_argument("--out", required=True, help="tokenizer folder to write")
    p.add_argument("--preset", default="fmnist", choices=TOKENIZER_PRESETS,
                   help="architecture preset: " + ", ".join(
                       f"{name} ({c.resolution}x{c.resolution} -> {c.grid}x{c.grid}, codebook {c.codebook_size})"
                       for name, c in PRESETS.items()) + "; LlamaGen's names: "
                   + ", ".join(f"{theirs} = {ours}" for theirs, ours in VQ_NAMES.items()))
    # the preset's fields it may override, and the run's settings (None: the preset's, or the config's)
    add_config_flags(p, VQConfig, only=("codebook_size", "codebook_dim", "ch"), unset=True,
                     shown=dict.fromkeys(("codebook_size", "codebook_dim", "ch"), "the preset's"))
    add_config_flags(p, TokenizerTrainConfig, only=("steps",), unset=True)
    add_config_flags(p, TokenizerTrainConfig, only=("minutes",))
    # the run's cadence is the model trainer's (the tokenizer trains on the same Trainer)
    add_config_flags(p, RunOptions, only=("ckpt_every",))
    add_config_flags(p, TokenizerTrainConfig, only=("batch_size", "lr"), unset=True)
    add_config_flags(p, TokenizerTrainConfig, only=("gan_weight", "gan_start", "lpips_weight", "lpips_vgg",
                                                    "lpips_lin", "flip", "eval_limit", "seed"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder (and start a stopped run again)")

    p = add_command(tok, "import", _import,
                    help="import a LlamaGen VQ checkpoint (e.g. vq_ds16_c2i.pt) from a local file",
                    description="Load LlamaGen's released VQ weights strictly with a weights-only unpickler and save "
                                "them as a ctfgen tokenizer folder. Containers 'ema', 'model', 'module', "
                                "'state_dict' or a bare state dict; DDP 'module.' and torch.compile '_orig_mod.' "
                                "key prefixes are removed (and reported). What the checkpoint records about "
                                "itself (VQ-16 or VQ-8, codebook size and dimension, image size) must agree with "
                                "the options. docs/LLAMAGEN.md walks from LlamaGen's files to samples.")
    p.add_argument("checkpoint", help="path to the LlamaGen .pt file")
    p.add_argument("out", help="tokenizer folder to write")
    p.add_argument("--preset", default=None, choices=TOKENIZER_PRESETS,
                   help="architecture: vq16 / VQ-16 or vq8 / VQ-8 (default: what the checkpoint records, "
                        "else read from its weights)")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                   help="which weights: ema, model (the raw training weights), or auto: ema when the file has them")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="image size the tokenizer serves: 256 -> 16x16 tokens with VQ-16, 384 -> 24x24 (default: the "
                        "checkpoint's recorded image_size, else 256)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = add_command(tok, "report", _report, data=True, device=True,
                    help="reconstruction PSNR, codebook usage and perplexity on a dataset split")
    p.add_argument("tokenizer", help="tokenizer folder")
    p.add_argument("--split", default="test", type=nonempty, help="data split")
    p.add_argument("--limit", type=nonneg_int, default=0, help="images to use (0: all)")

    p = add_command(sub, "encode", _encode, data=True, device=True, help="encode a dataset split into a token-code store",
                    description="Encode every image of a split (and its augmented views) once into a memory-mapped "
                                "uint16 store with labels and a manifest recording the tokenizer and data fingerprints. "
                                "Runs under torchrun to shard the work across processes. Finished chunks of images are "
                                "kept, so running the same command again after a kill resumes.")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--out", required=True, help="code store folder to write")
    p.add_argument("--split", default="train", type=nonempty, help="data split")
    p.add_argument("--views", default="none", choices=VIEW_MODES,
                   help="augmented views per image: none (the image only; right for digits, text and anything with "
                        "a handedness), flip (image + mirror), tencrop (LlamaGen's ImageNet recipe: ten crops with "
                        "their mirrors) (default: none)")
    p.add_argument("--crop-range", type=float_range(1.0), default=1.1,
                   help="ten-crop: resize to resolution x this before cropping (LlamaGen: 1.1; 1.05 also used)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per encoder batch")
    p.add_argument("--limit", type=nonneg_int, default=0, help="encode only the split's first N images (0: all); for quick runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _train(args) -> int:
    from ...tokenizer.config import TokenizerTrainConfig, VQConfig, vq_preset
    from ...tokenizer.train import train_tokenizer

    vq = vq_preset(args.preset, **given_flags(VQConfig, args, only=("codebook_size", "codebook_dim", "ch")))
    data = data_config(args, default_resolution=vq.resolution, default_channels=vq.channels)
    if args.channels is None:
        from ...data import stored_format

        channels, _, what = stored_format(data, "train")
        if channels != data.channels:  # a grey tokenizer would silently drop the data's colour (and vice versa)
            data = replace(data, channels=channels)
            print(f"channels: {channels}, the data's, not the {args.preset} preset's {vq.channels} ({what}); "
                  "--channels chooses")
    vq = replace(vq, resolution=data.resolution, channels=data.channels).validate()
    cfg = config_from_args(TokenizerTrainConfig, args, skip=("vq", "data", "steps", "batch_size", "lr", "betas"),
                           vq=vq, data=data, **given_flags(TokenizerTrainConfig, args, only=("steps", "batch_size", "lr")))
    device = setup_device(args)
    report = train_tokenizer(cfg, args.out, device=device, overwrite=args.overwrite, ckpt_every=args.ckpt_every)
    print(json.dumps({"tokenizer": args.out, **report}, indent=2))
    return 0


def _import(args) -> int:
    from ...tokenizer import import_llamagen_vq

    art = import_llamagen_vq(args.checkpoint, args.out, preset=args.preset, weights=args.weights,
                             resolution=args.resolution, overwrite=args.overwrite)
    for note in art.manifest["info"]["notes"]:
        print(note)
    cfg = art.module.config
    print(f"imported {args.checkpoint} -> {args.out}: codebook {cfg.codebook_size} x {cfg.codebook_dim}, "
          f"{cfg.resolution}x{cfg.resolution} images -> {cfg.grid}x{cfg.grid} tokens (fingerprint {art.fingerprint})")
    return 0


def _print_classes(ds, limit: int, doing: str = "scoring") -> None:
    """The class counts of the images a command uses: with --limit, the split's first N."""
    from ...data import class_counts, dataset_class_table, describe_classes

    if limit and limit < len(ds):
        print(f"{doing} the first {limit} of the {len(ds)} images of split {ds.split!r} (--limit)")
    print(describe_classes(dataset_class_table(ds, counts={ds.split: class_counts(ds, limit).tolist()})))


def _report(args) -> int:
    from ...data import load_dataset
    from ...tokenizer import load_tokenizer
    from ...tokenizer.report import reconstruction_report

    device = setup_device(args)
    tok = load_tokenizer(args.tokenizer, device)
    ds = load_dataset(data_config(args, default_resolution=tok.config.resolution, default_channels=tok.config.channels), args.split)
    _print_classes(ds, args.limit)
    print(json.dumps(reconstruction_report(tok, ds, limit=args.limit, device=device), indent=2))
    return 0


def _encode(args) -> int:
    from ...codes import encode_dataset
    from ...data import load_dataset
    from ...dist import init_distributed, leaving_group  # torchrun support shared with training and sampling
    from ...tokenizer.artifact import TokenizerArtifact

    setup_device(args)  # thread count
    info = init_distributed(args.device)
    with leaving_group(info):
        device = info.device
        tok = TokenizerArtifact.load(args.tokenizer, device)
        cfg = tok.module.config
        ds = load_dataset(data_config(args, default_resolution=cfg.resolution, default_channels=cfg.channels),
                          args.split)
        if info.is_main:
            _print_classes(ds, args.limit, doing="encoding")
        store = encode_dataset(tok, ds, args.out, views=args.views, crop_range=args.crop_range,
                               batch_size=args.batch_size, limit=args.limit, device=device, overwrite=args.overwrite)
        if store is not None:
            print(f"wrote {args.out}: codes {store.codes.shape} uint16, {store.num_classes} classes, "
                  f"fingerprint {store.fingerprint}")
    return 0
