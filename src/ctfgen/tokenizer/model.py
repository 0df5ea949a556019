"""LlamaGen's VQ tokenizer family: conv encoder/decoder + L2-normalised vector quantiser.

Module and parameter names follow LlamaGen's `vq_model.py` so that a `vq16` state_dict has exactly
the key names and shapes of the released `vq_ds16_c2i.pt` (see llamagen.py for the import). Only
the rolling `codebook_used` statistics buffer is left out: it records usage, not the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CtfgenError
# the presets live with VQConfig (torch-free), so that the command line offers them at once
from .config import LLAMAGEN_NAMES, PRESETS, VQConfig, vq_preset  # noqa: F401


def _norm(cfg: VQConfig, c: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cfg: VQConfig, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(cfg, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(cfg, c_out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map (1x1 conv projections)."""

    def __init__(self, cfg: VQConfig, c: int):
        super().__init__()
        self.norm = _norm(cfg, c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q_BLC, k_BLC, v_BLC = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))
        out_BLC = F.scaled_dot_product_attention(q_BLC[:, None], k_BLC[:, None], v_BLC[:, None])[:, 0]
        return x + self.proj_out(out_BLC.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as LlamaGen (and taming) do


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One resolution level: its residual blocks, each followed by attention where the level has it."""
    for j, res in enumerate(level.res):
        h = res(h)
        if hasattr(level, "attn"):
            h = level.attn[j](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + tuple(cfg.ch_mult)
        self.conv_blocks = nn.ModuleList()
        last = len(cfg.ch_mult) - 1
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            c_in, c_out = cfg.ch * in_mult[i], cfg.ch * mult
            level.res = nn.ModuleList(ResnetBlock(cfg, c_in if j == 0 else c_out, c_out) for j in range(cfg.num_res_blocks))
            if i == last:  # attention only at the lowest resolution, where it is cheap
                level.attn = nn.ModuleList(AttnBlock(cfg, c_out) for _ in range(cfg.num_res_blocks))
            else:
                level.downsample = Downsample(c_out)
            self.conv_blocks.append(level)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = nn.ModuleList([ResnetBlock(cfg, c, c), AttnBlock(cfg, c), ResnetBlock(cfg, c, c)])
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        mults = tuple(reversed(cfg.ch_mult))  # level 0 is the lowest resolution
        c = cfg.ch * mults[0]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(cfg, c, c), AttnBlock(cfg, c), ResnetBlock(cfg, c, c)])
        self.conv_blocks = nn.ModuleList()
        n_res = cfg.num_res_blocks + 1
        for i, mult in enumerate(mults):
            level = nn.Module()
            c_out = cfg.ch * mult
            level.res = nn.ModuleList(ResnetBlock(cfg, c if j == 0 else c_out, c_out) for j in range(n_res))
            c = c_out
            if i == 0:
                level.attn = nn.ModuleList(AttnBlock(cfg, c) for _ in range(n_res))
            if i != len(mults) - 1:
                level.upsample = Upsample(c)
            self.conv_blocks.append(level)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codeword on the unit sphere (cosine), straight-through gradients."""

    LOOKUP_ROWS = 512

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.beta = cfg.commit_beta
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        with torch.no_grad():
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))

    def codebook(self) -> torch.Tensor:
        # The stored weights need not be unit-norm (LlamaGen's are not): normalise at use.
        return F.normalize(self.embedding.weight, dim=-1)

    def lookup(self, z_BDHW: torch.Tensor) -> torch.Tensor:
        """Indices (B, H, W) of the nearest codewords to the L2-normalised encoder outputs."""
        z_ND = F.normalize(z_BDHW.permute(0, 2, 3, 1).reshape(-1, z_BDHW.shape[1]), dim=-1)
        codebook_DV = self.codebook().t()
        # On unit vectors the smallest squared distance is the largest dot product. Row chunks keep
        # each (rows, V) score table in cache: with a small codebook_dim the full table is memory-bound
        # (scripts/bench_codebook_lookup.py: time ratio 0.72 on an idle 2-core CPU).
        idx_N = torch.cat([(z_CD @ codebook_DV).argmax(dim=-1) for z_CD in z_ND.split(self.LOOKUP_ROWS)])
        B, _, H, W = z_BDHW.shape
        return idx_N.view(B, H, W)

    def embed(self, idx_BHW: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx_BHW, self.codebook()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z_BDHW: torch.Tensor):
        z = F.normalize(z_BDHW, dim=1)
        idx_BHW = self.lookup(z)
        zq = self.embed(idx_BHW)
        codebook_loss = F.mse_loss(zq, z.detach())
        commit_loss = self.beta * F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()  # straight-through estimator
        return zq, idx_BHW, codebook_loss, commit_loss


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg.validate()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        self.quantize = VectorQuantizer(cfg)

    def encode_latent(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x_BCHW))

    def decode_latent(self, zq_BDHW: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq_BDHW))

    def forward(self, x_BCHW: torch.Tensor):
        zq, idx_BHW, codebook_loss, commit_loss = self.quantize(self.encode_latent(x_BCHW))
        return self.decode_latent(zq), idx_BHW, codebook_loss, commit_loss

    def codebook(self) -> torch.Tensor:
        return self.quantize.codebook()

    @torch.no_grad()
    def encode_codes(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        self._check_images(x_BCHW)
        return self.quantize.lookup(self.encode_latent(x_BCHW))

    @torch.no_grad()
    def decode_codes(self, codes_BHW: torch.Tensor) -> torch.Tensor:
        if codes_BHW.dim() == 2:  # (B, L) raster sequences, as the generators produce them
            g = int(round(codes_BHW.shape[1] ** 0.5))
            if g * g != codes_BHW.shape[1]:
                raise CtfgenError(f"cannot decode {codes_BHW.shape[1]} tokens: not a square grid")
            codes_BHW = codes_BHW.view(-1, g, g)
        V = self.config.codebook_size
        if codes_BHW.numel() and (int(codes_BHW.min()) < 0 or int(codes_BHW.max()) >= V):
            raise CtfgenError(f"codes out of range for a codebook of {V}: min {int(codes_BHW.min())}, max {int(codes_BHW.max())}")
        return self.decode_latent(self.quantize.embed(codes_BHW.long()))

    def _check_images(self, x: torch.Tensor) -> None:
        c = self.config.channels
        if x.dim() != 4 or x.shape[1] != c or x.shape[-1] % self.config.downsample or x.shape[-2] % self.config.downsample:
            raise CtfgenError(f"tokenizer expects images (B, {c}, H, W) with H, W divisible by {self.config.downsample}; got {tuple(x.shape)}")
