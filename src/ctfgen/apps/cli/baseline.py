"""`ctfgen baseline import`: a baseline model folder from LlamaGen's c2i_*.pt GPT checkpoints."""
from __future__ import annotations

import argparse

from ...models.preset_table import PRESET_NAMES as MODEL_PRESETS
from ._util import add_group, positive_int

ORDER = 55

DESCRIPTION = """Load a LlamaGen class-conditional GPT checkpoint (c2i_B_256.pt ... c2i_3B_384.pt) strictly with a
weights-only unpickler and write a baseline model folder made from --tokenizer, as `ctfgen train
baseline` would (without the training state), so that `ctfgen pipeline make --baseline` and
`ctfgen sample --baseline` check it like any other. Containers 'model', 'ema', 'module',
'state_dict' or a bare state dict (FSDP's consolidated.pth); DDP 'module.' and torch.compile
'_orig_mod.' key prefixes are removed and reported. What the checkpoint records about itself
decides the size and the token grid; options that disagree with it are refused."""

EPILOG = """From LlamaGen's released files to samples (docs/LLAMAGEN.md):
  ctfgen tokenizer import vq_ds16_c2i.pt runs/vq16            # --resolution 384 for the 384 models
  ctfgen baseline import c2i_B_256.pt runs/llamagen-B --tokenizer runs/vq16
  ctfgen pipeline make --out runs/llamagen-B-pipe --tokenizer runs/vq16 --baseline runs/llamagen-B
  ctfgen sample --pipeline runs/llamagen-B-pipe --classes 207,360,387 --per-class 4 --grid grid.png --cfg 4"""


def register(sub) -> None:
    group = add_group(sub, "baseline", help="import LlamaGen's released GPT checkpoints as baseline model folders")
    p = group.add_parser("import", help="write a baseline model folder from a LlamaGen c2i_*.pt file",
                         description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="LlamaGen GPT checkpoint (.pt, .pth or .safetensors)")
    p.add_argument("out", help="model folder to write")
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="tokenizer folder the model samples for (`ctfgen tokenizer import vq_ds16_c2i.pt`)")
    p.add_argument("--preset", default=None, choices=MODEL_PRESETS, metavar="SIZE",
                   help="B, L, XL, XXL or 3B (or LlamaGen's GPT-B, ...) (default: the checkpoint's recorded "
                        "gpt_model, else read from its weights)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="pixels per side the model was trained for: 256 -> 16x16 tokens, 384 -> 24x24 (default: the "
                        "checkpoint's recorded image_size, else the size in its file name, else the tokenizer's)")
    p.add_argument("--weights", default="model", choices=("model", "ema", "auto"),
                   help="model (the raw weights LlamaGen's samplers use), ema, or auto: ema when present")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_import)


def _import(args) -> int:
    from ...llamagen_gpt import import_llamagen_gpt

    model, manifest = import_llamagen_gpt(args.checkpoint, args.out, tokenizer=args.tokenizer, preset=args.preset,
                                          image_size=args.image_size, which=args.weights, overwrite=args.overwrite)
    for note in model.import_info["notes"]:
        print(note)
    cfg = model.config
    print(f"imported {args.checkpoint} -> {args.out}: GPT-{cfg.preset} ({model.num_params() / 1e6:.1f}M parameters), "
          f"{cfg.num_classes} classes, vocabulary {cfg.vocab_size}, {cfg.grid}x{cfg.grid} tokens "
          f"(fingerprint {manifest['fingerprint']})")
    return 0
