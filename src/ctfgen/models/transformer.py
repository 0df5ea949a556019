"""LlamaGen's transformer block (pre-norm RMSNorm, 2D RoPE, SwiGLU, no biases) and the trunk the
three models share: class prefix token, token embedding, blocks, final norm and an untied head.

Module names follow LlamaGen's GPT so that its c2i checkpoints load strictly into the baseline.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 so bf16 activations normalise as accurately as fp32 ones
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_2d_table(grid: int, head_dim: int, *, base: float = 10000.0, n_prefix: int = 1,
                  prefix: str = "zero", device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (n_prefix + grid*grid, head_dim/2), one row per sequence position.

    Rotary pair i < head_dim/4 turns with the token's row, the rest with its column, both at
    frequencies base^(-2i/(head_dim/2)). Prefix rows are all zero (LlamaGen) or the identity.
    """
    n_freq = head_dim // 4
    freqs_F = base ** (-torch.arange(n_freq, device=device, dtype=torch.float32) * 2 / (head_dim // 2))
    idx = torch.arange(grid, device=device, dtype=torch.float32)
    rows_G, cols_G = idx.repeat_interleave(grid), idx.repeat(grid)  # raster order, row-major
    angles_GP = torch.cat([rows_G[:, None] * freqs_F, cols_G[:, None] * freqs_F], dim=1)
    fill = 0.0 if prefix == "zero" else 1.0
    cos_pre = torch.full((n_prefix, 2 * n_freq), fill, device=device)
    sin_pre = torch.zeros(n_prefix, 2 * n_freq, device=device)
    return torch.cat([cos_pre, angles_GP.cos()]), torch.cat([sin_pre, angles_GP.sin()])


def apply_rope(x_BLHD: torch.Tensor, cos_LP: torch.Tensor, sin_LP: torch.Tensor) -> torch.Tensor:
    # pairs are adjacent channels (2p, 2p+1), as in LlamaGen; rotate in fp32 like it does
    x = x_BLHD.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos_LP[None, :, None, :], sin_LP[None, :, None, :]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x_BLHD)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        # (B, H, S, hd) once setup_cache ran. Buffers (not saved): they follow .to() like the weights,
        # and compilers treat them as static, mutable state (CUDA graphs keep their addresses).
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x_BLD: torch.Tensor, cos_LP: torch.Tensor, sin_LP: torch.Tensor, *,
                is_causal: bool, pos: int | torch.Tensor | None = None) -> torch.Tensor:
        """Plain attention over x, or, with `pos`, write x's keys/values into the cache at slots
        pos.. and attend over the filled prefix [:pos+L] of the cache. A tensor `pos` (0-dim, on
        the cache's device) takes the static-shape path instead: the whole cache is attended, the
        slots after each query masked, so every position runs the same kernels on the same shapes
        (one CUDA graph or compiled graph for all positions)."""
        B, L, _ = x_BLD.shape
        q, k, v = self.wqkv(x_BLD).view(B, L, 3, self.n_head, self.head_dim).unbind(2)
        q_BHLD = apply_rope(q, cos_LP, sin_LP).transpose(1, 2)
        k_BHLD = apply_rope(k, cos_LP, sin_LP).transpose(1, 2)
        v_BHLD = v.transpose(1, 2)
        mask = None
        if isinstance(pos, torch.Tensor):
            slots_L = pos + torch.arange(L, device=pos.device)
            self.k_cache[:B].index_copy_(2, slots_L, k_BHLD.to(self.k_cache.dtype))
            self.v_cache[:B].index_copy_(2, slots_L, v_BHLD.to(self.v_cache.dtype))
            k_BHLD, v_BHLD = self.k_cache[:B], self.v_cache[:B]
            mask = torch.arange(k_BHLD.shape[2], device=pos.device)[None, :] <= slots_L[:, None]
            is_causal = False
        elif pos is not None:
            end = pos + L
            self.k_cache[:B, :, pos:end] = k_BHLD
            self.v_cache[:B, :, pos:end] = v_BHLD
            # Slicing the filled prefix (instead of a masked full buffer) keeps work per step
            # proportional to the tokens decoded so far, which is what counts on a CPU.
            k_BHLD, v_BHLD = self.k_cache[:B, :, :end], self.v_cache[:B, :, :end]
            if is_causal and L > 1 and pos > 0:
                # is_causal aligns the mask top-left, wrong when queries start at pos > 0
                q_pos = torch.arange(pos, end, device=x_BLD.device)
                mask = torch.arange(end, device=x_BLD.device)[None, :] <= q_pos[:, None]
            is_causal = is_causal and L > 1 and mask is None
        y_BHLD = F.scaled_dot_product_attention(
            q_BHLD, k_BHLD, v_BHLD, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0)
        y_BLD = y_BHLD.transpose(1, 2).reshape(B, L, self.dim)
        return self.resid_dropout(self.wo(y_BLD))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos_LP, sin_LP, *, is_causal: bool, pos: int | None = None):
        h = x + self.attention(self.attention_norm(x), cos_LP, sin_LP, is_causal=is_causal, pos=pos)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedding(nn.Module):
    """Class label -> prefix token. Row `num_classes` is the null class used for CFG."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, label_B: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(label_B)[:, None, :]  # (B, 1, D)

    def drop(self, label_B: torch.Tensor, p: float) -> torch.Tensor:
        """Replace each label by the null class with probability p (CFG training)."""
        if p <= 0:
            return label_B
        dropped = torch.rand(label_B.shape, device=label_B.device) < p
        return torch.where(dropped, torch.full_like(label_B, self.num_classes), label_B)


class Trunk(nn.Module):
    """Everything the models share: [class prefix] + token embeddings -> blocks -> norm -> head."""

    ARTIFACT = "ctfgen.models.artifact:TrainedModel"  # its folder kind's class (pipelines save it with it)

    is_causal = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        if cfg.n_prefix:
            self.cls_embedding = LabelEmbedding(cfg.num_classes, cfg.dim)
        self.tok_embeddings = nn.Embedding(cfg.in_vocab, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.out_vocab, bias=False)
        # not persistent: LlamaGen checkpoints do not carry the table, and it is cheap to rebuild
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self._build_rope()
        if not self.output.weight.is_meta:  # meta models (counting, load targets) hold no values
            self.apply(self._init_weights)
            nn.init.zeros_(self.output.weight)  # LlamaGen: the head starts at uniform predictions

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.config.init_std)

    def _build_rope(self) -> None:
        c = self.config
        self.rope_cos, self.rope_sin = rope_2d_table(
            c.grid, c.head_dim, base=c.rope_base, n_prefix=c.n_prefix, prefix=c.cls_rope,
            device=self.rope_cos.device)

    def _apply(self, fn, recurse=True):
        # .to(bf16) would also round the rotary table; LlamaGen keeps it fp32, so rebuild it
        super()._apply(fn, recurse)
        self._build_rope()
        return self

    def embed(self, tokens_BT: torch.Tensor | None, cond_B: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if cond_B is not None:
            parts.append(self.cls_embedding(cond_B))
        if tokens_BT is not None:
            parts.append(self.tok_embeddings(tokens_BT))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return self.tok_dropout(h)  # LlamaGen drops the class embedding too

    def hidden(self, h_BLD: torch.Tensor, *, pos: int | torch.Tensor | None = None) -> torch.Tensor:
        """Blocks + final norm over h placed at sequence positions start.. (start = pos or 0): the
        final hidden states (B, L, D). A tensor `pos` selects the static-shape cache path (see
        Attention.forward)."""
        L = h_BLD.shape[1]
        if isinstance(pos, torch.Tensor):
            rows_L = pos + torch.arange(L, device=pos.device)
            cos, sin = self.rope_cos[rows_L], self.rope_sin[rows_L]
        else:
            start = pos or 0
            cos, sin = self.rope_cos[start:start + L], self.rope_sin[start:start + L]
        for layer in self.layers:
            h_BLD = layer(h_BLD, cos, sin, is_causal=self.is_causal, pos=pos)
        return self.norm(h_BLD)

    def run(self, h_BLD: torch.Tensor, *, pos: int | torch.Tensor | None = None) -> torch.Tensor:
        """`hidden`, then the head: float32 logits (B, L, out_vocab)."""
        return self.output(self.hidden(h_BLD, pos=pos)).float()

    # ---- the training loss, as a sum over the positions it counts (batch-split invariance) ----

    def counted_positions(self, batch: dict) -> torch.Tensor:
        """(B, L) bool: the target positions `loss_sum` counts. All of them unless a model leaves
        some out (stage 2 with coarse noise). The trainer sums these over every micro-batch and rank
        before the first forward, to divide the summed losses once by the global count."""
        return torch.ones_like(batch["codes"], dtype=torch.bool)

    def prepare_batch(self, batch: dict) -> dict:
        """The batch with whatever random draws of its own the loss needs (stage 2: coarse noise)."""
        return batch

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(summed float32 cross-entropy over `counted_positions`, metrics): implemented by each model."""
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(mean cross-entropy over the counted positions, metrics {"loss", "acc"}) of one batch: the
        training loss of a batch trained on its own."""
        batch = self.prepare_batch(batch)
        total, metrics = self.loss_sum(batch)
        count = self.counted_positions(batch).sum().clamp(min=1)
        loss = total / count
        return loss, {**metrics, "loss": loss.detach()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
