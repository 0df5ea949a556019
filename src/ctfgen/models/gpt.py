"""The causal class-conditional model: LlamaGen's c2i GPT ("baseline", vocabulary = the codebook)
and stage 1 of CTF ("ar", vocabulary = the K coarse labels). Same code, different vocabulary.

Sequence: [class, t0, t1, ..., t_{L-2}] -> logits for t0 .. t_{L-1}.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CtfgenError
from .config import ModelConfig
from .transformer import Trunk


class GPT(Trunk):
    is_causal = True

    def __init__(self, cfg: ModelConfig):
        if cfg.spec.member_head:
            raise CtfgenError(f"GPT is the causal model, not the stage-2 member head (kind {cfg.kind!r})")
        super().__init__(cfg)
        self._cache_len = 0

    @property
    def target_key(self) -> str:
        """The batch entry this model learns: codebook indices or coarse labels."""
        return self.config.spec.predicts

    def forward(self, tokens_BT: torch.Tensor, cond_B: torch.Tensor) -> torch.Tensor:
        """Logits (B, T+1, V): position i predicts token i given the class and tokens < i.

        `cond_B` may hold the null class (index num_classes) for unconditional logits.
        """
        return self.run(self.embed(tokens_BT, cond_B))

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(cross-entropy summed over all B * L target positions, {"acc": mean accuracy})."""
        target_BL = batch[self.target_key]
        label_B = batch["label"]
        if self.training:
            label_B = self.cls_embedding.drop(label_B, self.config.class_dropout_prob)
        logits_BLV = self(target_BL[:, :-1], label_B)
        total = F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten(), reduction="sum")
        with torch.no_grad():
            acc = (logits_BLV.argmax(-1) == target_BL).float().mean()
        return total, {"acc": acc}

    # ---- static KV cache for sampling (gpt-fast style) ----

    def setup_cache(self, batch_size: int, max_len: int | None = None, *,
                    dtype: torch.dtype | None = None, device=None) -> None:
        """Preallocate (B, H, 1 + max_len, hd) key/value buffers in every layer.

        `max_len` counts image tokens (default: the whole grid). Calling again replaces the cache;
        `generate_tokens` does so whenever the batch, length, dtype or device no longer fit.
        """
        c = self.config
        max_len = c.seq_len if max_len is None else max_len
        if max_len > c.seq_len:
            raise CtfgenError(f"setup_cache: max_len {max_len} exceeds the model's {c.seq_len} tokens")
        ref = self.tok_embeddings.weight
        shape = (batch_size, c.n_head, c.n_prefix + max_len, c.head_dim)
        for layer in self.layers:
            attn = layer.attention
            attn.k_cache = torch.zeros(shape, dtype=dtype or ref.dtype, device=device or ref.device)
            attn.v_cache = torch.zeros_like(attn.k_cache)
        self._cache_len = c.n_prefix + max_len

    def cache_fits(self, batch_size: int, max_len: int | None = None) -> bool:
        """Whether the current cache serves `batch_size` sequences of `max_len` image tokens with the
        weights' dtype and device (a cache made before `.to(bfloat16)` or `.to("cuda")` does not)."""
        cache = self.layers[0].attention.k_cache
        ref = self.tok_embeddings.weight
        need = self.config.n_prefix + (self.config.seq_len if max_len is None else max_len)
        return (cache is not None and cache.shape[0] >= batch_size and self._cache_len >= need
                and cache.dtype == ref.dtype and cache.device == ref.device)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.k_cache = layer.attention.v_cache = None
        self._cache_len = 0

    def _check_cache(self, batch: int, end: int) -> None:
        cache = self.layers[0].attention.k_cache
        if cache is None:
            raise CtfgenError("call setup_cache(batch_size, ...) before prefill/decode_step")
        if batch > cache.shape[0] or end > self._cache_len:
            raise CtfgenError(f"KV cache holds {cache.shape[0]} sequences of {self._cache_len} positions; "
                              f"asked for {batch} sequences up to position {end}")
        ref = self.tok_embeddings.weight
        if cache.dtype != ref.dtype or cache.device != ref.device:
            raise CtfgenError(f"KV cache is {cache.dtype} on {cache.device} but the weights are {ref.dtype} on "
                              f"{ref.device} (the model was converted after setup_cache); call setup_cache again")

    @torch.no_grad()
    def prefill(self, cond_B: torch.Tensor, tokens_BP: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the class token and, teacher-forced, the first P image tokens `tokens_BP` (an edit's
        kept prefix) in one pass, writing their keys/values into the cache; returns the logits
        (B, V) of image token P (0 without tokens), the same as a full forward pass gives there."""
        P = 0 if tokens_BP is None else tokens_BP.shape[1]
        if P >= self.config.seq_len:
            raise CtfgenError(f"prefill: {P} tokens given, but the model predicts only {self.config.seq_len}")
        self._check_cache(cond_B.shape[0], self.config.n_prefix + P)
        return self.run(self.embed(tokens_BP if P else None, cond_B), pos=0)[:, -1]

    @torch.no_grad()
    def decode_step(self, tokens_B: torch.Tensor, pos: int) -> torch.Tensor:
        """Feed image token number `pos` (0-based); returns the logits (B, V) of token pos + 1."""
        slot = self.config.n_prefix + pos
        self._check_cache(tokens_B.shape[0], slot + 1)
        return self.run(self.embed(tokens_B[:, None], None), pos=slot)[:, -1]

    @torch.no_grad()
    def decode_step_static(self, tokens_B: torch.Tensor, pos_t: torch.Tensor) -> torch.Tensor:
        """decode_step with static shapes, for CUDA graphs and torch.compile: `pos_t` is a 0-dim
        long tensor on the model's device holding the image-token number, the whole cache is
        attended (later slots masked), and nothing reads a value back to the host. Same logits as
        decode_step. Checks only the batch: the position is not known on the host."""
        cache = self.layers[0].attention.k_cache
        if cache is None:
            raise CtfgenError("call setup_cache(batch_size, ...) before decode_step_static")
        if tokens_B.shape[0] > cache.shape[0]:
            raise CtfgenError(f"KV cache holds {cache.shape[0]} sequences; asked for {tokens_B.shape[0]}")
        return self.run(self.embed(tokens_B[:, None], None), pos=pos_t + self.config.n_prefix)[:, -1]

