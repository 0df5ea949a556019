"""`ctfgen train {ar,aux,baseline}`: train stage 1, stage 2 or the LlamaGen baseline on a codes store."""
from __future__ import annotations

import argparse
import dataclasses
import json

from ...errors import CtfgenError
from ...models.config import KINDS, ModelConfig
from ._util import add_config_flags, add_group, config_from_args, device, nonneg_int

ORDER = 50

# one line per kind, from the kinds' table (models/config.py), listed alphabetically
KIND_HELP = {name: KINDS[name].help for name in sorted(KINDS)}

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


# The flags are made from TrainConfig and RunOptions (train/config.py): name, help, default, bounds,
# choices and metavar come from each field's `option`. Here is only what the command line adds: the
# default of --lr, decided by --preset once it is known (`_run`).
LR_DEFAULT = ("by --preset: 8e-3 for tiny and small, the best rate measured for their runs of 200-1000 steps "
              "(docs/RESULTS.md); 1e-4, LlamaGen's, for B and larger")
FLAG_OPTS = dict(switches=True, shown={"lr": LR_DEFAULT})
LENGTH_REQUIRED = {name: "none; required: one of --steps and --epochs" for name in ("steps", "epochs")}

# Every field of TrainConfig and RunOptions gets its flag (a new field gets one unasked), except these,
# which are not command-line settings of their own: field -> what sets it instead.
NOT_FLAGS = {
    "kind": "the sub-command (train ar | aux | baseline)",
    "model_overrides": "--model-opt FIELD=VALUE, repeatable",
    "progress": "--no-progress",
    "tensorboard": "--log-to tensorboard",
    "wandb": "--log-to wandb",
}
# stage 2's settings: flags of `train aux` (the kinds with a member head) only
MEMBER_HEAD_ONLY = ("aux_coarse_noise", "aux_loss")
# fields with a place of their own in the help (the model group, the required length of the run);
# the other fields follow in their class's order in "optimisation" (TrainConfig) and "execution" (RunOptions)
PLACED = ("preset", "aux_coarse_noise", "steps", "epochs")


def _rest(cls, spec) -> tuple[str, ...]:
    """The fields of `cls` whose flags go in its group in class order: all but NOT_FLAGS, PLACED and,
    for a kind without a member head, stage 2's."""
    skip = {*NOT_FLAGS, *PLACED, *(() if spec.member_head else MEMBER_HEAD_ONLY)}
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)


def _add_args(p: argparse.ArgumentParser, kind: str) -> None:
    from ...train.config import RunOptions, TrainConfig

    spec = KINDS[kind]
    io = p.add_argument_group("inputs and output")
    io.add_argument("--codes", required=True, metavar="DIR", help="codes store from `ctfgen encode`")
    if spec.needs_coarse_map:
        io.add_argument("--coarse-map", metavar="DIR", help="coarse map from `ctfgen cluster` (same tokenizer as the codes)")
    io.add_argument("--out", required=True, metavar="DIR",
                    help="run folder: checkpoint, metrics.jsonl, loss_curve.png; what samplers load")

    m = p.add_argument_group("model")
    add_config_flags(m, TrainConfig, only=("preset",), **FLAG_OPTS)
    m.add_argument("--model-opt", action="append", default=[], metavar="FIELD=VALUE", type=_model_opt,
                   help="override a model config field, value in JSON (e.g. mask_to_cluster=false); repeatable "
                        "(default: none)")
    if spec.member_head:
        add_config_flags(m, TrainConfig, only=("aux_coarse_noise",), **FLAG_OPTS)

    o = p.add_argument_group("optimisation (LlamaGen's recipe by default)")
    # argparse refuses a command line with neither, and the usage line shows them as required
    add_config_flags(o.add_mutually_exclusive_group(required=True), TrainConfig, only=("steps", "epochs"),
                     **{**FLAG_OPTS, "shown": {**FLAG_OPTS["shown"], **LENGTH_REQUIRED}})
    add_config_flags(o, TrainConfig, only=_rest(TrainConfig, spec), **FLAG_OPTS)
    p.set_defaults(lr=None)  # None: default_lr(--preset), decided when the preset is known

    r = p.add_argument_group("execution")
    add_config_flags(r, RunOptions, only=_rest(RunOptions, spec), types={"device": device}, **FLAG_OPTS)
    r.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads for torch (0: torch's default)")
    # not "--log": torchrun's own parser would take it for an abbreviation of its --log-dir
    r.add_argument("--log-to", action="append", default=[], choices=["tensorboard", "wandb"],
                   help="also log loss, lr, grad norm, tokens/s and memory live (rank 0): TensorBoard event files "
                        "in OUT/tensorboard, or W&B offline in OUT/wandb; repeatable; needs that package")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))  # checked by --model-opt at parse time
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

    from ...train import RunOptions, TrainConfig, default_lr, train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(TrainConfig, args, skip=("model_overrides",), kind=args.kind,
                           lr=args.lr if args.lr is not None else default_lr(args.preset),
                           model_overrides=dict(args.model_opt))
    run = config_from_args(RunOptions, args, progress=not args.no_progress, tensorboard="tensorboard" in args.log_to,
                           wandb="wandb" in args.log_to)
    res = train(cfg, codes_dir=args.codes, coarse_map_dir=getattr(args, "coarse_map", None), out_dir=args.out, run=run)
    if res.records and (not torch.distributed.is_available() or not torch.distributed.is_initialized()):
        last = res.records[-1]
        state = "finished" if res.finished else "stopped"
        print(f"{state} at step {res.step}/{res.total_steps}: loss {last['loss']:.4f}"
              + (f", acc {last['acc']:.3f}" if "acc" in last else "") + f" -> {res.out_dir}")
    return 0
