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

MAX_LOGITS = 1 << 25  # (rows x L x V) floats per forward pass: ~128 MB of fp32 logits


@torch.inference_mode()
def sequence_log_probs(model, tokens_NL: torch.Tensor, labels_N: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """(N, L) float32 log p(token_t | class, tokens < t) of every position under the sampler's per-token
    distribution (guidance and temperature of `s`; no top-k/top-p), teacher-forced in one pass."""
    c = model.config
    N, L = tokens_NL.shape
    guided = s.guidance_scale != 1.0
    inputs_NL = tokens_NL[:, :-1]
    if guided:
        cond = torch.cat([labels_N, torch.full_like(labels_N, c.num_classes)])
        logits = model(torch.cat([inputs_NL, inputs_NL]), cond)
        scale_L = torch.tensor([guidance_at(t, L, s.guidance_scale, s.guidance_schedule) for t in range(L)],
                               device=logits.device)[None, :, None]
        logits_NLV = logits[N:] + scale_L * (logits[:N] - logits[N:])
    else:
        logits_NLV = model(inputs_NL, labels_N)
    logp_NLV = torch.log_softmax(scaled_logits(logits_NLV.flatten(0, 1), s.temperature), -1).view(N, L, -1)
    return logp_NLV.gather(-1, tokens_NL[..., None]).squeeze(-1)


@torch.inference_mode()
def full_conditional(model, tokens_BL: torch.Tensor, labels_B: torch.Tensor, i: int,
                     s: SamplingConfig) -> torch.Tensor:
    """(B, V) float32 log p(c_i = v | all other tokens) of each sequence (normalised over v)."""
    B, L = tokens_BL.shape
    V = model.config.out_vocab
    device = model.tok_embeddings.weight.device
    cand_BVL = tokens_BL.to(device)[:, None, :].repeat(1, V, 1)
    cand_BVL[:, :, i] = torch.arange(V, device=device)
    cand_NL, labels_N = cand_BVL.flatten(0, 1), labels_B.to(device).repeat_interleave(V)
    rows = max(1, MAX_LOGITS // (L * V * (2 if s.guidance_scale != 1.0 else 1)))
    score_N = torch.cat([sequence_log_probs(model, cand_NL[r:r + rows], labels_N[r:r + rows], s)[:, i:].sum(-1)
                         for r in range(0, len(cand_NL), rows)])
    return torch.log_softmax(score_N.view(B, V), -1)


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
