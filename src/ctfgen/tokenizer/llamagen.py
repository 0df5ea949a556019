"""Import LlamaGen's released VQ checkpoints (vq_ds16_c2i.pt, vq_ds8_c2i.pt) from a local file.

LlamaGen saves `{"model", "optimizer", "discriminator", ..., "args": argparse.Namespace, ["ema"]}`
with torch.save; copies also come as {"module"} / {"state_dict"} / a bare state dict, with DDP or
torch.compile key prefixes. `llamagen_files.read_llamagen_file` reads them all with the weights-
only unpickler. What the file records about itself (VQ-16 or VQ-8, codebook size and dimension,
image size) decides the tokenizer, and a request that disagrees is refused.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..artifacts import file_sha256
from ..errors import ArtifactError, CtfgenError
from ..llamagen_files import ForeignWeights, read_llamagen_file, size_from_name
from .artifact import TokenizerArtifact, load_state_strict
from .model import LLAMAGEN_NAMES, PRESETS, VQConfig, VQModel, vq_preset

# Statistics only (a rolling window of recently used indices); not part of the model.
_DROP = ("quantize.codebook_used",)
_CODEBOOK = "quantize.embedding.weight"


def read_llamagen_checkpoint(path: str | Path, *, weights: str = "auto") -> tuple[dict, str]:
    """The state_dict to use (weights "auto": `ema` if present, else `model`/`module`/`state_dict`,
    else a bare state dict; or "ema" / "model") and the entry it came from."""
    fw = read_llamagen_file(path, weights=weights, what="LlamaGen VQ checkpoint")
    return fw.state, fw.container


def _levels(state: dict) -> int:
    return len({k.split(".")[2] for k in state if k.startswith("encoder.conv_blocks.")})


def infer_vq_preset(fw: ForeignWeights, preset: str | None) -> str:
    """vq16 or vq8: the one asked for, checked against what the file records (args, name, weights)."""
    asked = LLAMAGEN_NAMES.get(preset, preset) if preset else None
    if asked is not None and asked not in PRESETS:
        vq_preset(asked)  # raises, naming the known presets
    evidence = []
    if fw.args.get("vq_model"):
        rec = LLAMAGEN_NAMES.get(str(fw.args["vq_model"]))
        if rec is None:
            raise CtfgenError(f"{fw.path} records vq_model {fw.args['vq_model']!r}, not one of {list(LLAMAGEN_NAMES)}")
        evidence.append((rec, f"the checkpoint's args record vq_model {fw.args['vq_model']!r}"))
    ds = size_from_name(fw.path, r"vq_ds(\d+)")
    if ds in (8, 16):
        evidence.append((f"vq{ds}", f"its file name says ds{ds}"))
    by_levels = {len(cfg.ch_mult): name for name, cfg in PRESETS.items() if name in ("vq16", "vq8")}
    if _levels(fw.state) in by_levels:
        evidence.append((by_levels[_levels(fw.state)], f"its encoder has {_levels(fw.state)} levels"))
    basis = f"--preset {preset}" if preset else None
    for name, why in evidence:
        if asked is None:
            asked, basis = name, why
            fw.notes.append(f"architecture: {name} ({why})")
        elif name != asked:
            raise CtfgenError(f"{fw.path}: {why}, i.e. {name}, but {basis} means {asked}; "
                              "leave --preset out or give the matching one")
    if asked is None:
        raise CtfgenError(f"{fw.path}: cannot tell VQ-16 from VQ-8 (no args, no vq_ds<N> name, unknown layout); "
                          "give --preset vq16 or vq8")
    return asked


def _config(fw: ForeignWeights, preset: str | None, resolution: int | None) -> VQConfig:
    if _CODEBOOK not in fw.state:
        raise ArtifactError(f"{fw.path}: missing '{_CODEBOOK}'; is this a LlamaGen VQ checkpoint?")
    size, dim = (int(n) for n in fw.state[_CODEBOOK].shape)
    for key, have in (("codebook_size", size), ("codebook_embed_dim", dim)):
        if fw.args.get(key) is not None and int(fw.args[key]) != have:
            raise ArtifactError(f"{fw.path}: its args record {key} {fw.args[key]} but its codebook is {size} x {dim}")
    name = infer_vq_preset(fw, preset)
    cfg = vq_preset(name, codebook_size=size, codebook_dim=dim)
    if resolution is None:
        recorded = fw.args.get("image_size")
        resolution = int(recorded) if recorded else cfg.resolution
        fw.notes.append(f"image size: {resolution} px ({'recorded in its args' if recorded else 'the default'}); "
                        "the tokenizer is convolutional, --resolution chooses another (384 for LlamaGen's 384 models)")
    if resolution % cfg.downsample:
        raise CtfgenError(f"resolution {resolution} is not a multiple of {name}'s downsampling {cfg.downsample}")
    return replace(cfg, resolution=resolution).validate()


def import_llamagen_vq(path: str | Path, out_dir: str | Path, *, preset: str | None = None,
                       config: VQConfig | None = None, weights: str = "auto", resolution: int | None = None,
                       overwrite: bool = False) -> TokenizerArtifact:
    """Load a LlamaGen VQ checkpoint strictly and save a tokenizer folder; returns its artifact
    (`.module` the VQModel in eval mode, `.fingerprint`, `.manifest`).

    preset: "vq16"/"VQ-16" or "vq8"/"VQ-8"; None: what the file records (args, file name, layout).
    config: an explicit VQConfig instead (tests, other sizes). weights: "auto" (ema if present),
    "ema" or "model". resolution: image size the tokenizer serves (None: the recorded image_size,
    else 256). The manifest's info "notes" say what was read and decided.
    Errors: ArtifactError (unreadable file, keys or shapes that do not fit), CtfgenError (a
    request that disagrees with the checkpoint).
    """
    fw = read_llamagen_file(path, weights=weights, what="LlamaGen VQ checkpoint")
    state = {k: v for k, v in fw.state.items() if k not in _DROP}
    if config is not None:
        if resolution is not None:
            config = replace(config, resolution=resolution).validate()
    else:
        config = _config(fw, preset, resolution)
    model = VQModel(config)
    load_state_strict(model, state, source=str(path))
    art = TokenizerArtifact(model, made_from={"llamagen_checkpoint": Path(path).name, "sha256": file_sha256(path),
                                              "weights": fw.container})
    art.save(out_dir, overwrite=overwrite, info={"imported_from": "LlamaGen", "notes": list(fw.notes),
                                                 "recorded_args": json.loads(json.dumps(fw.args, default=str))})
    model.eval()
    return art
