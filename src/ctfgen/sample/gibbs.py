"""Gibbs sweeps over a region of a causal model's tokens: what raster-order resampling cannot see.

Drawing region position i in raster order conditions on the tokens before i only. The exact full
conditional given every other token is

    p(c_i = v | c_-i)  ∝  prod_{j >= i} p(c_j | c_<j)   with c_i = v,

since the factors j < i do not involve c_i. It is computed by scoring all V candidate values of c_i:
V teacher-forced forward passes of the whole sequence (batched), each summing the log-probabilities
of tokens i..L-1. One sweep visits the region's positions in raster order, so it costs
|region| x V sequence forward passes per image (x2 with classifier-free guidance): for CTF's stage 1
V is the number of coarse labels K (the demo: 128), for the baseline the codebook (4096), which makes
sweeps K/V times cheaper for CTF.

The per-token factors are the sampler's: guided logits (the same schedule) at the stage-1 / baseline
temperature. Top-k and top-p are not applied: truncation could give every candidate probability 0
once a kept token outside the truncated set follows.
"""
from __future__ import annotations

import torch

from .sampler import guidance_at, pick, sample_seed, sample_uniforms, scaled_logits
from .settings import SamplingConfig

@torch.inference_mode()
def sequence_log_probs(model, tokens_NL: torch.Tensor, labels_N: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """(N, L) float32 log p(token_t | class, tokens < t) of every position under the sampler's per-token
    distribution (guidance and temperature of `s`; no top-k/top-p), teacher-forced in one pass."""
    c = model.config
    N, L = tokens_NL.shape
    g = 2 if s.guidance_scale != 1.0 else 1
    cond = labels_N if g == 1 else torch.cat([labels_N, torch.full_like(labels_N, c.num_classes)])
    logits = model(tokens_NL[:, :-1].repeat(g, 1), cond)  # (gN, L, V): [cond rows, null rows]
    scale_L = torch.tensor([guidance_at(t, L, s.guidance_scale, s.guidance_schedule) for t in range(L)],
                           device=logits.device)
    logp_NLV = _per_token(logits.view(g, N, L, -1).transpose(0, 1), scale_L, s)
    return logp_NLV.gather(-1, tokens_NL[..., None]).squeeze(-1)


@torch.inference_mode()
def full_conditional(model, tokens_BL: torch.Tensor, labels_B: torch.Tensor, i: int, s: SamplingConfig, *,
                     chunk: int = 512) -> torch.Tensor:
    """(B, V) float32 log p(c_i = v | all other tokens) of each sequence (normalised over v).

    The class and tokens < i are the same for every candidate: they are fed once per sequence, and
    their keys/values copied to the candidates' cache rows, which then run tokens i..L-2 only (in
    chunks of `chunk` candidates)."""
    B, L = tokens_BL.shape
    c = model.config
    V = c.out_vocab
    device = model.tok_embeddings.weight.device
    tokens_BL, labels_B = tokens_BL.to(device), labels_B.to(device)
    guided = s.guidance_scale != 1.0
    g = 2 if guided else 1
    scale_L = torch.tensor([guidance_at(t, L, s.guidance_scale, s.guidance_schedule) for t in range(L)], device=device)
    chunk = min(chunk, V)
    if not model.cache_fits(g * chunk):
        model.setup_cache(g * chunk)
    out_BV = torch.empty(B, V, device=device)
    for b in range(B):
        cond = labels_B[b:b + 1]
        if guided:
            cond = torch.cat([cond, torch.full_like(cond, c.num_classes)])
        prefix = tokens_BL[b:b + 1, :i].expand(g, i) if i else None
        first_gV = model.prefill(cond, prefix)  # logits of token i: the same for every candidate
        kept_K = [(layer.attention.k_cache[:g, :, :c.n_prefix + i].clone(),
                   layer.attention.v_cache[:g, :, :c.n_prefix + i].clone()) for layer in model.layers]
        first_V = _per_token(first_gV[None, :, None], scale_L[i:i + 1], s)[0, 0]  # (V,) log p(c_i = v | c_<i)
        for v0 in range(0, V, chunk):
            vs = torch.arange(v0, min(V, v0 + chunk), device=device)
            n = len(vs)
            score_n = first_V[vs].clone()
            if i < L - 1:
                for layer, (k, v) in zip(model.layers, kept_K):  # the prefix, once per candidate row
                    layer.attention.k_cache[:g * n, :, :c.n_prefix + i] = k.repeat_interleave(n, 0)
                    layer.attention.v_cache[:g * n, :, :c.n_prefix + i] = v.repeat_interleave(n, 0)
                cand_nT = tokens_BL[b, i:L - 1].repeat(n, 1)
                cand_nT[:, 0] = vs
                logits = model.run(model.embed(cand_nT.repeat(g, 1), None), pos=c.n_prefix + i)  # tokens i+1..L-1
                logp_nTV = _per_token(logits.view(g, n, L - 1 - i, -1).transpose(0, 1), scale_L[i + 1:], s)
                target_nT = tokens_BL[b, i + 1:].expand(n, -1)
                score_n += logp_nTV.gather(-1, target_nT[..., None]).squeeze(-1).sum(-1)
            out_BV[b, vs] = score_n
    return torch.log_softmax(out_BV, -1)


def _per_token(logits_NgTV: torch.Tensor, scale_T: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """(N, T, V) log-probabilities of the sampler's per-token distribution from (N, g, T, V) logits
    (g = 2: [cond, null], guided with the per-position scale; g = 1: as they are), at the temperature."""
    if logits_NgTV.shape[1] == 2:
        cond, null = logits_NgTV[:, 0], logits_NgTV[:, 1]
        logits_NTV = null + scale_T[None, :, None] * (cond - null)
    else:
        logits_NTV = logits_NgTV[:, 0]
    N, T, V = logits_NTV.shape
    return torch.log_softmax(scaled_logits(logits_NTV.reshape(N * T, V), s.temperature), -1).view(N, T, V)


def gibbs_sweeps(model, tokens_BL: torch.Tensor, labels_B: torch.Tensor, region_L: torch.Tensor, seeds: list[int],
                 s: SamplingConfig, *, sweeps: int) -> torch.Tensor:
    """`sweeps` passes over the region (bool (L,)) in raster order, each position redrawn from its full
    conditional. Sweep k of sample b uses uniforms from its own seed sample_seed(seeds[b], -1 - k)
    (apart from the L or 2L an edit draws), position i the uniform i. Returns new (B, L) tokens."""
    tokens_BL = tokens_BL.clone()
    positions = [int(i) for i in region_L.nonzero().flatten()]
    for k in range(sweeps):
        u_BL = sample_uniforms([sample_seed(sd, -1 - k) for sd in seeds], tokens_BL.shape[1])
        for i in positions:
            logp_BV = full_conditional(model, tokens_BL, labels_B, i, s)
            tokens_BL[:, i] = pick(logp_BV, u_BL[:, i].to(logp_BV.device), argmax=s.argmax)
    return tokens_BL
