"""The samplers: stage 1 / the baseline (autoregressive, static KV cache, classifier-free guidance)
and stage 2 (one bidirectional pass that turns coarse labels into codebook indices).

Randomness is per sample, not per batch: sample number i of a run with seed s draws every random
number it needs from its own generator, seeded from (s, i) (`sample_seed`). Tokens are then picked
by inverse-CDF sampling with that sample's uniform for that step, so a sample's tokens do not depend
on which other samples share its batch, on the batch size, or on how many processes share the work.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

from ..errors import CtfgenError
from .settings import SamplingConfig

# ---------------------------------------------------------------- per-sample randomness

def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` in a run with global seed `seed` (a hash: no overlaps between runs)."""
    digest = hashlib.sha256(f"ctfgen-sample:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_uniforms(seeds: list[int], n: int) -> torch.Tensor:
    """(B, n) uniforms in [0, 1): row b comes from a generator seeded with seeds[b] alone."""
    out_BN = torch.empty(len(seeds), n)
    for b, s in enumerate(seeds):
        out_BN[b] = torch.rand(n, generator=torch.Generator().manual_seed(s))
    return out_BN


# ---------------------------------------------------------------- picking a token

def inverse_cdf(probs_NV: torch.Tensor, u_N: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Index i with cdf[i-1] <= u * total < cdf[i]: exact categorical sampling with one uniform.

    A row whose total is not a positive number (NaN, or no mass at all) has no distribution to draw
    from: check=True raises CtfgenError; check=False leaves it to the caller (`bad_rows`).
    """
    cdf_NV = probs_NV.cumsum(-1)
    if check:
        _refuse_bad_rows(bad_rows(cdf_NV[:, -1]))
    x_N1 = (u_N.to(cdf_NV) * cdf_NV[:, -1]).unsqueeze(-1)
    # right=True never lands on a zero-probability entry (its cdf equals its predecessor's)
    return torch.searchsorted(cdf_NV, x_N1, right=True).squeeze(-1).clamp_max(probs_NV.shape[-1] - 1)


def bad_rows(total_N: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows whose probability mass is NaN or zero (a NaN or +inf logit, or every logit -inf)."""
    return ~(total_N > 0)


def _refuse_bad_rows(bad_N: torch.Tensor, where: str = "") -> None:
    if bool(bad_N.any()):
        raise CtfgenError(
            f"the model gave non-finite logits{where} for {int(bad_N.sum())} of {bad_N.numel()} rows (NaN, +inf, "
            "or no finite logit): its weights are damaged or come from a diverged run; retrain or load another "
            "checkpoint")


def scaled_logits(logits_NV: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature in float32, with the limit T -> 0 taken exactly where the division overflows.

    For a tiny temperature (1e-38) logits / T is +-inf, and the softmax of that is NaN. Such rows get
    the limit instead: 0 at the row's largest logit(s) and -inf elsewhere, i.e. argmax (ties share
    the mass). Rows holding NaN or +inf logits are left as they are, to be refused. At T = 1 the input
    itself is returned (as float32), not a copy.
    """
    logits_NV = logits_NV.float()
    if temperature == 1.0:
        return logits_NV  # x / 1 is x: one (N, V) temporary less per token
    z_NV = logits_NV / temperature
    if temperature > 1.0:
        # |logit / T| < |logit|: no finite logit overflows. Skipping the checks below matters: at
        # V = 16384 they cost more than the softmax (`bench speed --sweep --profile`, sampling ops)
        return z_NV
    overflow_N1 = (torch.isinf(z_NV) & torch.isfinite(logits_NV)).any(-1, keepdim=True)
    broken_N1 = (torch.isnan(logits_NV) | torch.isposinf(logits_NV)).any(-1, keepdim=True)
    limit_NV = torch.where(logits_NV == logits_NV.amax(-1, keepdim=True), 0.0, float("-inf"))
    return torch.where(overflow_N1 & ~broken_N1, limit_NV, z_NV)


def pick(logits_NV: torch.Tensor, u_N: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
         top_p: float = 1.0, argmax: bool = False, check: bool = True) -> torch.Tensor:
    """One token per row. Sorts only when top-k or top-p asks for it (top-k sorts just k values).

    Raises CtfgenError for rows with NaN or +inf logits (check=False: the caller checks, see
    `generate_tokens`). A temperature so small that logits / T overflows acts as argmax.
    """
    if argmax:
        if check:
            _refuse_bad_rows(broken_rows(logits_NV))
        return logits_NV.argmax(-1)
    V = logits_NV.shape[-1]
    index_NK = None
    if 0 < top_k < V:
        logits_NV, index_NK = logits_NV.topk(top_k, dim=-1)  # sorted, largest first
    elif top_p < 1.0:
        logits_NV, index_NK = logits_NV.sort(dim=-1, descending=True)
    probs_NV = torch.softmax(scaled_logits(logits_NV, temperature), dim=-1)
    if top_p < 1.0:
        # nucleus: keep a token while the mass before it is below p (the most likely one always stays)
        before_NV = probs_NV.cumsum(-1) - probs_NV
        probs_NV = probs_NV.masked_fill(before_NV >= top_p, 0.0)
    choice_N = inverse_cdf(probs_NV, u_N, check=check)
    return choice_N if index_NK is None else index_NK.gather(-1, choice_N[:, None]).squeeze(-1)


def guidance_at(step: int, steps: int, scale: float, schedule: str) -> float:
    if schedule == "linear" and steps > 1:
        return 1.0 + (scale - 1.0) * step / (steps - 1)
    return scale


# ---------------------------------------------------------------- stage 1 / baseline

@torch.inference_mode()
def generate_tokens(model, labels_B: torch.Tensor, u_BL: torch.Tensor, settings: SamplingConfig | None = None, *,
                    step_fn: Callable | None = None, progress: bool = False, given_BL: torch.Tensor | None = None,
                    keep_L: torch.Tensor | None = None) -> torch.Tensor:
    """Sample (B, L) tokens from a causal GPT ("baseline": codes, "ar": coarse labels).

    `settings` (default: SamplingConfig.baseline()): its stage-1 / baseline fields guidance_scale,
    guidance_schedule, temperature, top_k, top_p and argmax. Guidance runs the batch doubled,
    [cond, null], through one static KV cache; the prefix is never recomputed. The cache must hold
    >= 2B (guided) or B sequences; it is set up here when it does not.
    `step_fn(tokens_B, pos) -> logits` replaces model.decode_step (e.g. a compiled one).

    Editing (sample/editing.py): where `keep_L` (bool (L,), one mask for the whole batch) is True,
    the token is `given_BL`'s, teacher-forced instead of drawn; token t still reads only u_BL[:, t],
    so the drawn positions use the same uniforms as an unedited sample. The kept tokens before the
    first drawn one go through the KV cache in one prefill (`GPT.prefill`).
    """
    s = (settings or SamplingConfig.baseline()).check()
    c = model.config
    B, L = labels_B.shape[0], c.seq_len
    device = model.tok_embeddings.weight.device
    labels_B = labels_B.to(device)
    tokens_BL = torch.empty(B, L, dtype=torch.long, device=device)
    kept = [False] * L  # on the host: a device mask read at every step would synchronise the GPU
    if keep_L is not None:
        kept = [bool(k) for k in keep_L.cpu()]
        tokens_BL.copy_(given_BL)
    P = kept.index(False) if False in kept else L  # the kept prefix
    if P == L:  # everything kept
        return tokens_BL
    guided = s.guidance_scale != 1.0
    cond_B = torch.cat([labels_B, torch.full_like(labels_B, c.num_classes)]) if guided else labels_B
    if not model.cache_fits(cond_B.shape[0]):
        model.setup_cache(cond_B.shape[0])  # none yet, or made for another batch, length, dtype or device
    step_fn = step_fn or model.decode_step
    u_BL = u_BL.to(device)
    # checked once at the end: a check per token would synchronise the GPU at every step
    broken_BL = torch.zeros(B, L, dtype=torch.bool, device=device)
    prefix_BP = tokens_BL[:, :P] if P else None
    logits_BV = model.prefill(cond_B, torch.cat([prefix_BP, prefix_BP]) if guided and P else prefix_BP)
    for t in _steps(L - P, progress, start=P):
        if t > P:
            prev_B = tokens_BL[:, t - 1]
            logits_BV = step_fn(torch.cat([prev_B, prev_B]) if guided else prev_B, t - 1)
        if kept[t]:
            continue
        if guided:
            # uncond + s * (cond - uncond) in one kernel
            scale = guidance_at(t, L, s.guidance_scale, s.guidance_schedule)
            logits_BV = torch.lerp(logits_BV[B:], logits_BV[:B], scale)
        broken_BL[:, t] = broken_rows(logits_BV)
        tokens_BL[:, t] = pick(logits_BV, u_BL[:, t], temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                               argmax=s.argmax, check=False)
    at_L = broken_BL.any(0)
    if at_L.device.type != "meta" and bool(at_L.any()):  # meta: shapes only (the device tests)
        _refuse_bad_rows(broken_BL[:, int(at_L.nonzero()[0])], where=f" at token {int(at_L.nonzero()[0])}")
    return tokens_BL


def broken_rows(logits_NV: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows holding a NaN or +inf logit, or no logit above -inf."""
    # the row's max is NaN, +inf or -inf in exactly those cases (max propagates NaN): one pass over
    # the row instead of the three elementwise tests and their reductions
    return ~torch.isfinite(logits_NV.amax(-1))


def _steps(n: int, progress: bool, start: int = 0):
    if not progress:
        return range(start, start + n)
    from ..progress import progress_bar

    return progress_bar(range(start, start + n), desc="tokens", leave=False)


# ---------------------------------------------------------------- stage 2

@torch.inference_mode()
def sample_fine(stage2, coarse_BL: torch.Tensor, labels_B: torch.Tensor | None, u_BL: torch.Tensor,
                settings: SamplingConfig | None = None, *, max_logits: int = 1 << 26) -> torch.Tensor:
    """Codes (B, L) from coarse labels through any stage 2 (models/stage2.py: the learned one or a
    parameter-free prior): one `stage2_logits` pass, each position sampled with its own uniform.

    `settings` (default: SamplingConfig()): its stage-2 fields stage2_temperature, stage2_top_k,
    stage2_argmax and stage2_guidance_scale. A cluster-masked stage 2 gives only the members'
    logits; an unmasked model's full (B, L, V) logits are made in chunks of samples of at most
    `max_logits` values (`stage2_rows`). labels_B may be None for a stage 2 that does not see the class.
    """
    s = (settings or SamplingConfig()).check()
    device = stage2.stage2_device
    coarse_BL, u_BL = coarse_BL.to(device), u_BL.to(device)
    labels_B = labels_B.to(device) if labels_B is not None else None
    B, L = coarse_BL.shape
    chunk = stage2.stage2_rows(B, L, s.stage2_guidance_scale, max_logits)
    codes_BL = torch.empty(B, L, dtype=torch.long, device=device)
    for b in range(0, B, chunk):
        coarse = coarse_BL[b:b + chunk]
        labels = labels_B[b:b + chunk] if labels_B is not None else None
        logits_NC = stage2.stage2_logits(coarse, labels, s.stage2_guidance_scale).flatten(0, 1)
        col_N = pick(logits_NC, u_BL[b:b + chunk].flatten(), temperature=s.stage2_temperature, top_k=s.stage2_top_k,
                     argmax=s.stage2_argmax)
        codes_BL[b:b + chunk] = stage2.stage2_codes(coarse.flatten(), col_N).view(coarse.shape)
    return codes_BL
