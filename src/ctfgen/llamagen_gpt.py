"""Import LlamaGen's class-conditional GPT checkpoints (c2i_B_256.pt, ... c2i_3B_384.pt) as ctfgen baselines.

Containers, wrapper prefixes and recorded args are handled by `llamagen_files`. The load is
strict: every key and shape must match, unlike LlamaGen's own samplers (strict=False). What a
checkpoint says about itself decides the model, and a request that disagrees is refused:

- size: LlamaGen's `gpt_model` arg ("GPT-B", ...) if recorded, else read from the weights (number
  of layers and width), else the `preset` asked for;
- token grid: `image_size // downsample_size` from the args, else the image size in a released
  file's name (c2i_L_384.pt -> 384 / 16 = 24), else the `grid` / `image_size` asked for. Nothing
  in the weights tells the grid (2D RoPE has no parameters), and a wrong one gives wrong logits
  without any error, so with none of these the load is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .artifacts import check_state_dict, file_sha256
from .errors import ArtifactError, CtfgenError
from .llamagen_files import ForeignWeights, read_llamagen_file, size_from_name
from .models import GPT, LLAMAGEN_NAMES, PRESETS, build_model, canonical_preset

# Not weights: older checkpoints may carry the rotary table, and a model saved after
# setup_caches (e.g. after sampling during training) carries its KV-cache buffers.
_DROP = ("freqs_cis", "causal_mask")
_DROP_SUFFIX = (".kv_cache.k_cache", ".kv_cache.v_cache")
DEFAULT_DOWNSAMPLE = 16  # LlamaGen's released c2i models all use VQ-16


def read_llamagen_state_dict(path: str | Path, *, which: str = "model") -> dict[str, torch.Tensor]:
    """The GPT weights inside a LlamaGen checkpoint. `which` = "model" (what LlamaGen's samplers
    use), "ema" (only in checkpoints trained with EMA) or "auto" (ema when present)."""
    return _read(path, which).state


def _read(path: str | Path, which: str) -> ForeignWeights:
    fw = read_llamagen_file(path, weights=which, what="LlamaGen GPT checkpoint")
    dropped = [k for k in fw.state if k in _DROP or k.endswith(_DROP_SUFFIX)]
    fw.state = {k: v for k, v in fw.state.items() if k not in dropped}
    if dropped:
        fw.notes.append(f"left out {len(dropped)} entries that are not weights (e.g. {dropped[0]!r})")
    for key in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight"):
        if key not in fw.state:
            raise ArtifactError(f"{fw.path}: missing '{key}'; is this a LlamaGen c2i GPT checkpoint?")
    return fw


def _recorded_preset(name: str) -> str:
    return LLAMAGEN_NAMES.get(name, name[4:] if name.startswith("GPT-") else name)


def _weights_shape(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.split(".")[1].isdigit()}
    return len(layers), int(state["tok_embeddings.weight"].shape[1])


def _resolve_preset(fw: ForeignWeights, preset: str | None, overrides: dict) -> str:
    n_layer, dim = _weights_shape(fw.state)
    asked = canonical_preset(preset) if preset else None
    recorded = fw.args.get("gpt_model")
    if recorded:
        rec = _recorded_preset(str(recorded))
        if asked and rec != asked:
            raise CtfgenError(f"{fw.path} records gpt_model {recorded!r}, but preset {preset!r} was asked for; "
                              "leave the preset out or give the recorded one")
        if asked is None:
            asked = canonical_preset(rec)
            fw.notes.append(f"size: {recorded} (recorded in the checkpoint's args)")
    if asked is None:
        matches = [p for p, d in PRESETS.items() if not p.startswith("aux") and (d["n_layer"], d["dim"]) == (n_layer, dim)]
        if not matches:
            raise CtfgenError(f"{fw.path}: weights of {n_layer} layers of width {dim} match no preset "
                              f"({', '.join(p for p in PRESETS if not p.startswith('aux'))}); give --preset")
        asked = matches[0]
        fw.notes.append(f"size: {asked} (read from the weights: {n_layer} layers of width {dim})")
    want = {**PRESETS[asked], **{k: v for k, v in overrides.items() if k in ("n_layer", "dim")}}
    if (want["n_layer"], want["dim"]) != (n_layer, dim):
        raise ArtifactError(f"{fw.path}: the weights have {n_layer} layers of width {dim}, but preset {asked!r} "
                          f"has {want['n_layer']} of width {want['dim']}; give the matching --preset "
                          f"(LlamaGen's sizes: {', '.join(LLAMAGEN_NAMES)})")
    return asked


def _resolve_grid(fw: ForeignWeights, grid: int | None, image_size: int | None,
                  fallback_grid: int | None = None) -> int:
    down = int(fw.args.get("downsample_size") or DEFAULT_DOWNSAMPLE)
    asked = grid
    if image_size is not None:
        if image_size % down:
            raise CtfgenError(f"image size {image_size} is not a multiple of the tokenizer's downsampling {down}")
        if grid is not None and grid != image_size // down:
            raise CtfgenError(f"grid {grid} and image size {image_size} disagree (image size / {down} = {image_size // down})")
        asked = image_size // down
    if fw.args.get("image_size"):
        size, source = int(fw.args["image_size"]), "the checkpoint's args record image_size"
    else:
        size, source = size_from_name(fw.path, r"c2i_[A-Za-z0-9]+_(\d+)"), "its file name says"
    if size is None:
        if asked is None and fallback_grid is not None:
            asked = fallback_grid
            fw.notes.append(f"token grid: {asked}x{asked}, the tokenizer's (the checkpoint does not record it)")
            return asked
        if asked is None:
            raise CtfgenError(f"{fw.path} does not record its image size (no args, no c2i_<size>_<pixels> name); "
                              "give it: --image-size 256 (16x16 tokens) or 384 (24x24)")
        fw.notes.append(f"token grid: {asked}x{asked}, as asked (the checkpoint does not record it)")
        return asked
    recorded = size // down
    if asked is not None and asked != recorded:
        raise CtfgenError(f"{fw.path}: {source} {size} px, a {recorded}x{recorded} token grid with downsampling {down}, "
                          f"but a {asked}x{asked} grid was asked for; leave the size out or give the recorded one")
    fw.notes.append(f"token grid: {recorded}x{recorded} ({source} {size} px, downsampling {down})")
    return recorded


def _check_args(fw: ForeignWeights, vocab_size: int, num_classes: int) -> None:
    a = fw.args
    if a.get("gpt_type", "c2i") != "c2i":
        raise CtfgenError(f"{fw.path} is a LlamaGen {a['gpt_type']!r} model; only class-conditional (c2i) ones import")
    if int(a.get("cls_token_num", 1)) != 1:
        raise CtfgenError(f"{fw.path} records cls_token_num {a['cls_token_num']}; c2i models use 1")
    for key, have in (("vocab_size", vocab_size), ("num_classes", num_classes)):
        if a.get(key) is not None and int(a[key]) != have:
            raise ArtifactError(f"{fw.path}: its args record {key} {a[key]} but its weights have {have}")


def load_llamagen_gpt(path: str | Path, preset: str | None = None, *, grid: int | None = None,
                      image_size: int | None = None, which: str = "model", **overrides) -> GPT:
    """A ctfgen baseline holding the weights of a LlamaGen c2i GPT checkpoint.

    preset: the size (B, L, XL, XXL, 3B, or LlamaGen's GPT-B, ...); None: what the checkpoint
    records, else what its weights show. grid / image_size: the token grid (16 for 256 px, 24 for
    384 px); None: what the checkpoint records (args, else a released file's name), refused when
    it records nothing. Vocabulary and class count come from the weights. The class prefix keeps
    LlamaGen's zero rotary row (cls_rope="zero"), needed for its numbers. The model's
    `import_info` says what was read and decided (container, stripped prefixes, size, grid).
    Errors: ArtifactError (unreadable file, keys or shapes that do not fit), CtfgenError (a
    request that disagrees with the checkpoint).
    """
    return _build(_read(path, which), preset, grid, image_size, overrides)


def _build(fw: ForeignWeights, preset: str | None, grid: int | None, image_size: int | None, overrides: dict,
           fallback_grid: int | None = None) -> GPT:
    sd = fw.state
    vocab_size = sd["tok_embeddings.weight"].shape[0]
    num_classes = sd["cls_embedding.embedding_table.weight"].shape[0] - 1
    _check_args(fw, vocab_size, num_classes)
    preset = _resolve_preset(fw, preset, overrides)
    grid = _resolve_grid(fw, grid, image_size, fallback_grid)
    with torch.device("meta"):  # the weights come from the file; allocate them once, below
        model = build_model("baseline", preset, vocab_size=vocab_size, num_classes=num_classes,
                            grid=grid, **overrides)
    check_state_dict(model, sd, where=f"{fw.path} (preset {preset!r})")
    model.to_empty(device="cpu")
    model.load_state_dict(sd, strict=True)
    model.import_info = {"container": fw.container, "notes": list(fw.notes), "recorded_args": fw.args,
                         "preset": preset, "grid": grid}
    return model.eval()


def import_llamagen_gpt(path: str | Path, out_dir: str | Path, *, tokenizer: str | Path, preset: str | None = None,
                        grid: int | None = None, image_size: int | None = None, which: str = "model",
                        overwrite: bool = False) -> tuple[GPT, dict]:
    """Write a baseline model folder (what `ctfgen train baseline` writes, without the training
    state) from a LlamaGen c2i checkpoint, made from the tokenizer folder `tokenizer` (e.g.
    `ctfgen tokenizer import vq_ds16_c2i.pt`), so that `ctfgen pipeline make` and `ctfgen sample`
    check it like any other. Refuses a tokenizer whose codebook or token grid differs."""
    tok_dir = Path(tokenizer)
    from .tokenizer.artifact import TokenizerArtifact
    from .tokenizer.model import VQConfig

    tok = TokenizerArtifact.read_manifest(tok_dir)
    tcfg = TokenizerArtifact.typed_config(tok_dir, tok, VQConfig)
    tok_grid = tcfg.grid
    # a checkpoint that records no image size is meant for the tokenizer's token grid
    model = _build(_read(path, which), preset, grid, image_size, {}, fallback_grid=tok_grid)
    cfg = model.config
    if cfg.vocab_size != tcfg.codebook_size:
        raise ArtifactError(f"{path} has a vocabulary of {cfg.vocab_size} codes but the tokenizer {tok_dir} has "
                            f"{tcfg.codebook_size}")
    if tok_grid != cfg.grid:
        raise ArtifactError(f"{path} samples {cfg.grid}x{cfg.grid} tokens but the tokenizer {tok_dir} serves "
                            f"{tok_grid}x{tok_grid} (resolution {tcfg.resolution}); import the tokenizer with "
                            f"--resolution {cfg.grid * tcfg.downsample}")
    from .models.artifact import TrainedModel

    info = dict(model.import_info)
    info["recorded_args"] = json.loads(json.dumps(info["recorded_args"], default=str))
    made_from = {"tokenizer": tok["fingerprint"], "llamagen_checkpoint": Path(path).name,
                 "sha256": file_sha256(path), "weights": info["container"]}
    manifest = TrainedModel(model, made_from=made_from).save(out_dir, overwrite=overwrite,
                                                             info={"imported_from": "LlamaGen", **info})
    return model, manifest
