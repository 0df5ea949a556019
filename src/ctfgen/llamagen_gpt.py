"""Import LlamaGen's class-conditional GPT checkpoints (c2i_B_256.pt, ...) into ctfgen's baseline.

Containers accepted: DDP training checkpoints {"model": sd, "optimizer", "steps", "args"[, "ema"]},
{"module": sd} / {"state_dict": sd}, or a bare state_dict (FSDP's consolidated.pth). The load is
strict: every key and shape must match the preset, unlike LlamaGen's own samplers (strict=False).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import check_state_dict, load_foreign_checkpoint
from .errors import ArtifactError, CtfgenError
from .models import GPT, build_model

# Not weights: older checkpoints may carry the rotary table, and a model saved after
# setup_caches (e.g. after sampling during training) carries its KV-cache buffers.
_DROP = ("freqs_cis", "causal_mask")
_DROP_SUFFIX = (".kv_cache.k_cache", ".kv_cache.v_cache")


def read_llamagen_state_dict(path: str | Path, *, which: str = "model") -> dict[str, torch.Tensor]:
    """The GPT weights inside a LlamaGen checkpoint. `which` = "model" (what LlamaGen's samplers
    use) or "ema" (only in checkpoints trained with EMA)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"LlamaGen GPT checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        obj = load_foreign_checkpoint(path, what="LlamaGen GPT checkpoint")
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a dict (state_dict or checkpoint), got {type(obj).__name__}")
    if which not in ("model", "ema"):
        raise CtfgenError(f"which={which!r}: expected 'model' or 'ema'")
    if which == "ema":
        if "ema" not in obj:
            raise ArtifactError(f"{path}: no 'ema' weights in this checkpoint (keys: {sorted(obj)[:8]})")
        sd = obj["ema"]
    else:
        sd = next((obj[k] for k in ("model", "module", "state_dict") if isinstance(obj.get(k), dict)), obj)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ArtifactError(f"{path}: not a state_dict, non-tensor entries {bad[:5]}")
    return {k: v for k, v in sd.items() if k not in _DROP and not k.endswith(_DROP_SUFFIX)}


def load_llamagen_gpt(path: str | Path, preset: str, *, grid: int = 16, which: str = "model",
                      **overrides) -> GPT:
    """A ctfgen baseline holding the weights of a LlamaGen c2i GPT checkpoint.

    `preset` is the size (B, L, XL, XXL, ...); vocabulary and class count are read from the
    weights. `grid` is not stored in the checkpoint: 16 for the 256x256 models, 24 for 384x384.
    The class prefix keeps LlamaGen's zero rotary row (cls_rope="zero"), needed for its numbers.
    """
    sd = read_llamagen_state_dict(path, which=which)
    for key in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight"):
        if key not in sd:
            raise ArtifactError(f"{path}: missing '{key}'; is this a LlamaGen c2i GPT checkpoint?")
    vocab_size = sd["tok_embeddings.weight"].shape[0]
    num_classes = sd["cls_embedding.embedding_table.weight"].shape[0] - 1
    with torch.device("meta"):  # the weights come from the file; allocate them once, below
        model = build_model("baseline", preset, vocab_size=vocab_size, num_classes=num_classes,
                            grid=grid, **overrides)
    check_state_dict(model, sd, where=f"{path} (preset {preset!r})")
    model.to_empty(device="cpu")
    model.load_state_dict(sd, strict=True)
    return model.eval()
