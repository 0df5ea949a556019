"""`ctfgen train {ar,aux,baseline}`: train stage 1, stage 2 or the LlamaGen baseline on a codes store."""
from __future__ import annotations

import argparse
import json

from ..errors import CtfgenError
from ._util import (
    MODEL_PRESETS,
    add_group,
    device,
    dropout_rate,
    float_range,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    seed_int,
)

ORDER = 50

KIND_HELP = {
    "ar": "stage 1: causal transformer over the K coarse labels (needs --coarse-map)",
    "aux": "stage 2: bidirectional transformer, coarse labels in, codebook indices out (needs --coarse-map)",
    "baseline": "LlamaGen's class-conditional GPT over the full codebook (no coarse map)",
}

EPILOG = """Run the same command again with the same --out to resume from the last checkpoint (exactly:
weights, optimizer, EMA, data order and random state). Settings that define the run must match;
--log-every, --ckpt-every, --grad-accum, --device, --fsdp, --precision, --aux-loss and --log-to may change.
Several GPUs / nodes: torchrun --nproc_per_node N -m ctfgen train ar ... (--batch-size stays global)."""


def register(sub) -> None:
    group = add_group(sub, "train", help="train stage 1 (ar), stage 2 (aux) or the baseline on encoded codes")
    for kind, text in KIND_HELP.items():
        p = group.add_parser(kind, help=text, description=text, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_args(p, kind)
        p.set_defaults(func=_run, kind=kind)


def _add_args(p: argparse.ArgumentParser, kind: str) -> None:
    io = p.add_argument_group("inputs and output")
    io.add_argument("--codes", required=True, metavar="DIR", help="codes store from `ctfgen encode`")
    if kind != "baseline":
        io.add_argument("--coarse-map", metavar="DIR", help="coarse map from `ctfgen cluster` (same tokenizer as the codes)")
    io.add_argument("--out", required=True, metavar="DIR",
                    help="run folder: checkpoint, metrics.jsonl, loss_curve.png; what samplers load")

    m = p.add_argument_group("model")
    m.add_argument("--preset", default="tiny", choices=MODEL_PRESETS, metavar="PRESET",
                   help="model size: tiny/small (Fashion-MNIST), B, L, XL, XXL, 3B (LlamaGen's GPT sizes, also "
                        "spelled GPT-B, ...), aux-B, aux-L (default: tiny)")
    m.add_argument("--model-opt", action="append", default=[], metavar="FIELD=VALUE", type=_model_opt,
                   help="override a model config field, value in JSON (e.g. mask_to_cluster=false); repeatable "
                        "(default: none)")
    if kind == "aux":
        m.add_argument("--aux-coarse-noise", type=dropout_rate, default=0.0, metavar="P",
                       help="fraction of coarse inputs replaced by random labels while training stage 2, so it "
                            "tolerates stage-1 mistakes (default: 0, ground truth only)")

    o = p.add_argument_group("optimisation (LlamaGen's recipe by default)")
    length = o.add_mutually_exclusive_group()
    length.add_argument("--steps", type=nonneg_int, default=0, help="optimizer steps to train (or --epochs)")
    length.add_argument("--epochs", type=nonneg_float, default=0.0,
                        help="passes over the codes (one random view per image), when --steps is not given")
    o.add_argument("--batch-size", type=positive_int, default=64, help="global batch per optimizer step (default: 64)")
    o.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate per 256 samples, scaled linearly with --batch-size (default: by --preset: "
                        "8e-3 for tiny and small, the best rate measured for their runs of 200-1000 steps "
                        "(docs/RESULTS.md); 1e-4, LlamaGen's, for B and larger)")
    o.add_argument("--warmup", type=nonneg_int, default=0, metavar="STEPS", help="linear warm-up steps (default: 0)")
    o.add_argument("--cosine", action="store_true", help="cosine decay after warm-up (default: constant lr)")
    o.add_argument("--min-lr-ratio", type=probability, default=0.0, help="end of the cosine decay, as a fraction of lr")
    o.add_argument("--weight-decay", type=nonneg_float, default=0.05, help="AdamW decay on >=2-D weights (default: 0.05)")
    o.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max gradient norm, 0 to disable (default: 1.0)")
    o.add_argument("--ema", type=float_range(0.0, 1.0, hi_open=True), default=0.0, metavar="DECAY",
                   help="keep an EMA of the weights with this decay, e.g. 0.9999; samplers use it (default: 0, off)")
    o.add_argument("--seed", type=seed_int, default=0, help="seed of initial weights, data order and dropout")

    r = p.add_argument_group("execution")
    r.add_argument("--grad-accum", type=positive_int, default=1, help="micro-steps per optimizer step on each process")
    r.add_argument("--log-every", type=positive_int, default=50, help="steps between metric records (default: 50)")
    r.add_argument("--ckpt-every", type=nonneg_int, default=None,
                   help="steps between checkpoints, 0: only at the end (default: a tenth of the run, at most 1000)")
    r.add_argument("--stop-after", type=nonneg_int, default=0, metavar="STEP",
                   help="checkpoint and stop once STEP steps are done (for time-limited jobs); rerun to continue")
    r.add_argument("--device", default="auto", type=device,
                   help="cpu, cuda, cuda:N or auto; bf16 autocast on CUDA, fp32 on CPU")
    r.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads for torch (0: torch's default)")
    r.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state across GPUs (under torchrun)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on a CPU; bf16: autocast on any device; fp32: none")
    if kind == "aux":
        r.add_argument("--aux-loss", default="auto", choices=["auto", "loop", "gather", "masked"],
                       help="how the cluster-masked loss is computed, same result (docs/GPU.md); auto: masked on "
                            "a GPU, on a CPU gather for equal-size clusters and loop otherwise (default: auto)")
    # not "--log": torchrun's own parser would take it for an abbreviation of its --log-dir
    r.add_argument("--log-to", action="append", default=[], choices=["tensorboard", "wandb"],
                   help="also log loss, lr, grad norm, tokens/s and memory live (rank 0): TensorBoard event files "
                        "in OUT/tensorboard, or W&B offline in OUT/wandb; repeatable; needs that package")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


# ModelConfig's fields (models/config.py), so --model-opt is checked without importing torch;
# tests/test_cli.py keeps the two lists equal.
MODEL_FIELDS = ("kind", "vocab_size", "coarse_vocab", "num_classes", "grid", "n_layer", "n_head", "dim", "multiple_of",
                "rope_base", "norm_eps", "init_std", "token_dropout", "attn_dropout", "resid_dropout", "ffn_dropout",
                "class_dropout_prob", "cls_rope", "use_class", "mask_to_cluster", "coarse_noise", "preset")  # fmt: skip
_SET_BY_TRAINING = ("kind", "vocab_size", "coarse_vocab", "num_classes", "grid", "preset")  # from the codes and flags


def _model_opt(item: str) -> tuple[str, object]:
    field, sep, value = item.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {item!r}")
    if field not in MODEL_FIELDS or field in _SET_BY_TRAINING:
        known = [f for f in MODEL_FIELDS if f not in _SET_BY_TRAINING]
        raise argparse.ArgumentTypeError(f"{field!r} is not a model field that can be set; known: {', '.join(known)}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value  # a bare string such as cls_rope=identity


def _run(args) -> int:
    if not args.steps and not args.epochs:
        raise CtfgenError("give the length of the run: --steps N or --epochs E")
    import torch

    from ..train import RunOptions, TrainConfig, default_lr, train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        kind=args.kind, preset=args.preset, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else default_lr(args.preset), warmup_steps=args.warmup,
        cosine=args.cosine, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema=args.ema, seed=args.seed,
        aux_coarse_noise=getattr(args, "aux_coarse_noise", 0.0), model_overrides=dict(args.model_opt),
    )
    run = RunOptions(device=args.device, grad_accum=args.grad_accum, log_every=args.log_every,
                     ckpt_every=args.ckpt_every, stop_after=args.stop_after, fsdp=args.fsdp, compile=args.compile,
                     progress=not args.no_progress, tensorboard="tensorboard" in args.log_to, wandb="wandb" in args.log_to,
                     precision=args.precision, aux_loss=getattr(args, "aux_loss", "auto"))
    res = train(cfg, codes_dir=args.codes, coarse_map_dir=getattr(args, "coarse_map", None), out_dir=args.out, run=run)
    if res.records and (not torch.distributed.is_available() or not torch.distributed.is_initialized()):
        last = res.records[-1]
        state = "finished" if res.finished else "stopped"
        print(f"{state} at step {res.step}/{res.total_steps}: loss {last['loss']:.4f}"
              + (f", acc {last['acc']:.3f}" if "acc" in last else "") + f" -> {res.out_dir}")
    return 0
