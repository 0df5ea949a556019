"""The sampling-speed benchmark: images/s of CTF (stage 1 + stage 2) and the baseline at the same
stage-1 size. The command `ctfgen bench speed` (apps/cli/bench.py) runs it and prints its tables.

Random weights (speed does not depend on them), batch 64 with guidance (128 sequences through the
cache), both samplers in one process, runs interleaved after a warm-up, median per sampler. Times
cover token sampling (codes), not the VQ decoder, which both share; LlamaGen's generate() figures
in ANCHORS.md are measured the same way.

With `profile=True` (`--profile`) one more batch of each sampler runs under torch.profiler and its
time is split into a few categories (blocks' linear layers, attention, output head, sampling ops,
stage 2, ...): the measured answer to "where does the time go", which explains the ratio.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..dist import device_name
from ..errors import CtfgenError
from ..memory import PeakRSS
from ..models import KINDS, build_model
from ..sample.pipeline import RANGE, BaselinePipeline, CTFPipeline
from ..sample.sampler import sample_seed
from .speed_presets import PRESETS


@dataclass
class SpeedResult:
    name: str
    params: dict[str, int]
    seconds: list[float] = field(default_factory=list)  # per timed batch
    peak_mem_mb: float = 0.0  # CUDA: max allocated; CPU: peak RSS of the process during its runs
    stage_s: dict[str, list[float]] = field(default_factory=dict)
    profile_s: dict[str, float] = field(default_factory=dict)  # --profile: seconds per category (CATEGORIES)
    profile_wall_s: float = 0.0  # --profile: wall time of the profiled batch (profiler overhead included)

    def images_per_s(self, batch_size: int) -> float:
        return batch_size / statistics.median(self.seconds)


def _model(kind: str, preset: str, cfg: dict, seed: int, **extra):
    torch.manual_seed(seed)
    m = build_model(kind, preset, vocab_size=cfg["vocab"], num_classes=cfg["num_classes"], grid=cfg["grid"],
                    coarse_vocab=cfg["k"] if KINDS[kind].needs_coarse_map else None, **extra)
    with torch.no_grad():  # the head starts at zero; random values give realistic, non-uniform choices
        m.output.weight.normal_(0.0, 0.02)
    return m.eval()


def build_pipelines(preset: str = "fmnist", *, aux_preset: str | None = None, device="cpu",
                    dtype: torch.dtype | None = None, compile: bool | str | None = False, seed: int = 0):
    """(CTF pipeline, baseline pipeline, the preset's dict) of a PRESETS entry, random weights."""
    if preset not in PRESETS:
        raise CtfgenError(f"bench speed: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset], **({"aux": aux_preset} if aux_preset else {}))
    (ctf,), base = pipelines_for(cfg, device=device, dtype=dtype, compile=compile, seed=seed)
    return ctf, base, cfg


def pipelines_for(cfg: dict, *, stage2_layers: Sequence[int | None] = (None,), device="cpu",
                  dtype: torch.dtype | None = None, compile: bool | str | None = False,
                  seed: int = 0) -> tuple[list[CTFPipeline], BaselinePipeline]:
    """CTF pipelines (one per entry of `stage2_layers`: the stage-2 depth, None for the aux preset's
    own, all sharing one stage-1 model) and the baseline, random weights, for `cfg` (a PRESETS-like
    dict: model, aux, vocab, k, grid, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    c2c = torch.randperm(cfg["vocab"], generator=g) % cfg["k"]  # balanced random clusters
    with torch.device(device):  # initialised where they run: XL-size weights are slow to fill on a CPU
        ar = _model("ar", cfg["model"], cfg, seed)
        auxes = [_model("aux", cfg["aux"], cfg, seed + 1, code_to_coarse=c2c, **({"n_layer": n} if n else {}))
                 for n in stage2_layers]
        baseline = _model("baseline", cfg["model"], cfg, seed + 2)
    kw = dict(dtype=dtype, compile=compile)
    ctfs = [CTFPipeline(None, ar=ar.to(device), aux=aux.to(device), **kw) for aux in auxes]
    return ctfs, BaselinePipeline(None, baseline=baseline.to(device), **kw)


def bench_speed(preset: str = "fmnist", *, batch_size: int = 64, runs: int = 3, warmup: int = 1,
                guidance_scale: float = 2.0, aux_preset: str | None = None, device="cpu",
                dtype: torch.dtype | None = None, compile: bool | str | None = False, seed: int = 0,
                progress: bool = True, profile: bool = False) -> tuple[list[SpeedResult], dict]:
    """Time `runs` batches of each sampler, alternating which goes first, after `warmup` rounds;
    then, with `profile`, split one more batch of each into categories (`profile_batch`)."""
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise CtfgenError(f"bench speed: need runs >= 1, warmup >= 0, batch_size >= 1 (got {runs}, {warmup}, {batch_size})")
    device = torch.device(device)
    ctf, base, cfg = build_pipelines(preset, aux_preset=aux_preset, device=device, dtype=dtype, compile=compile,
                                     seed=seed)
    settings = {"ctf": ctf.settings(guidance_scale=guidance_scale),
                "baseline": base.settings(guidance_scale=guidance_scale)}
    pipes = {"baseline": base, "ctf": ctf}
    results = {name: SpeedResult(name, {r: m.num_params() for r, m in p.models.items()})
               for name, p in pipes.items()}
    labels_B = torch.arange(batch_size) % cfg["num_classes"]
    time_interleaved(pipes, results, settings, labels_B, runs=runs, warmup=warmup, seed=seed,
                     desc=f"bench speed {preset}" if progress else None)
    if profile:  # after the timed runs, so the profiler's overhead never reaches the timed figures
        profile_each(pipes, results, settings, labels_B, seed=seed + warmup + runs)
    info = {"preset": preset, **cfg, "batch_size": batch_size, "runs": runs, "warmup": warmup,
            "guidance_scale": guidance_scale, "device": device_name(device),
            "dtype": str(dtype or torch.float32).replace("torch.", ""), "compile": compile,
            "sampling": {n: vars(s) for n, s in settings.items()}}
    return [results["baseline"], results["ctf"]], info


def time_interleaved(pipes: dict, results: dict[str, SpeedResult], settings: dict, labels_B: torch.Tensor, *,
                     runs: int, warmup: int, seed: int = 0, desc: str | None = None) -> None:
    """Sample `warmup + runs` rounds of one batch (labels_B) from every pipeline, in `pipes`' order on
    even rounds and reversed on odd ones (so no sampler always runs just after the same other one);
    each timed batch's seconds, stage timings and peak memory go into results[name]."""
    device = next(iter(pipes.values())).device
    rounds = range(warmup + runs)
    if desc is not None:
        from ..progress import progress_bar

        rounds = progress_bar(rounds, desc=desc)
    for r in rounds:
        for name in (list(pipes) if r % 2 == 0 else list(pipes)[::-1]):
            pipe, res = pipes[name], results[name]
            seeds = [sample_seed(seed + r, i) for i in range(len(labels_B))]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            timings: dict[str, float] = {}
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                pipe.sample_tokens(labels_B, seeds, settings[name], timings=timings)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                pipe.clear_caches()  # each call sets up its cache, as a real call does
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else mem.peak
            res.peak_mem_mb = max(res.peak_mem_mb, peak / 2**20)
            if r >= warmup:
                res.seconds.append(dt)
                for k, v in timings.items():
                    res.stage_s.setdefault(k, []).append(v)


def profile_each(pipes: dict, results: dict[str, SpeedResult], settings: dict, labels_B: torch.Tensor, *,
                 seed: int) -> None:
    """One more batch of every pipeline under the profiler (`profile_batch`) into results[name]."""
    for name, pipe in pipes.items():
        seeds = [sample_seed(seed, i) for i in range(len(labels_B))]
        results[name].profile_s, results[name].profile_wall_s = profile_batch(pipe, labels_B, seeds, settings[name])


# ---------------------------------------------------------------- --profile: where a batch's time goes

# Table rows, in order. The pipeline opens a record_function range per stage (pipeline.RANGE +
# "stage1", "stage2", "tokens"); the bench adds ranges around the models' pieces (`_profile_ranges`)
# and `_category` names an op by the innermost of them plus the op's own name.
CATEGORIES = {
    "linear": "blocks: linear layers",  # q/k/v, out and MLP projections (aten::linear and its mm)
    "attention": "blocks: attention (sdpa)",  # scaled_dot_product_attention over the KV cache
    "block_ops": "blocks: other ops",  # RMSNorm, rotary, KV-cache writes, SiLU gate, residual adds
    "head": "output head (dim -> K or V)",  # the final nn.Linear of stage 1 / the baseline
    "sampling": "sampling ops",  # other ops outside the models: guidance lerp, softmax, inverse CDF, uniforms
    "embed_norm": "embeddings, final norm",
    "cache_setup": "KV-cache allocation",  # setup_cache: zeroing the static cache once a batch
    # self time of the bench's ranges: the interpreter between ops (module calls, the decoding loop),
    # the same per token for both samplers; it also holds part of the profiler's own overhead
    "python": "Python between ops",
    "stage2": "stage 2 (whole pass)",  # everything under the stage-2 call: trunk, member logits, picks
}
_RANGE = RANGE  # prefix of the pipeline's ranges and the bench's own
_LINEAR_OPS = {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm"}


def _in_range(name: str, fn):
    from torch.profiler import record_function

    def wrapped(*args, **kwargs):
        with record_function(_RANGE + name):
            return fn(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def _profile_ranges(pipe):
    """Open record_function ranges around every model's blocks, head, embeddings and final norm
    (forward hooks) and its KV-cache setup, which is not a module call: it is wrapped on the model
    instance (shadowing the method). The stage-2 range is the pipeline's own. Everything is undone
    on exit."""
    from torch.profiler import record_function

    open_ranges: list = []

    def enter(name):
        def hook(module, args):
            open_ranges.append(record_function(_RANGE + name))
            open_ranges[-1].__enter__()
        return hook

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)

    handles, cached = [], []
    for model in pipe.models.values():
        named = [("block", b) for b in model.layers] + [("head", model.output), ("embed", model.norm),
                                                         ("embed", model.tok_embeddings)]
        if hasattr(model, "cls_embedding"):
            named.append(("embed", model.cls_embedding))
        for name, module in named:
            handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
        if hasattr(model, "setup_cache"):
            model.setup_cache = _in_range("cache", model.setup_cache)
            cached.append(model)
    try:
        yield
    finally:
        for model in cached:
            del model.setup_cache  # the class's method again
        for h in handles:
            h.remove()
        while open_ranges:  # only when a forward raised between its hooks
            open_ranges.pop().__exit__(None, None, None)


def _category(event) -> str | None:
    """CATEGORIES key of one profiler event's self time; None outside the profiled batch."""
    ops, ranges = [], []  # innermost first: ops below the innermost bench range, and the ranges
    e = event
    while e is not None and e.name != _RANGE + "batch":
        if e.name.startswith(_RANGE):
            ranges.append(e.name)
        elif not ranges:
            ops.append(e.name)
        e = e.cpu_parent
    if e is None:
        return None  # another thread's event, or the profiler's own
    if _RANGE + "stage2" in ranges:
        return "stage2"  # stage 2's own blocks also run the hooks: the whole pass is one row
    if not ops:
        return "python"  # a range's self time: no op was running
    innermost = ranges[0] if ranges else None
    if innermost == _RANGE + "block":
        # the op or an op that called it (mm under aten::linear, the kernel under sdpa)
        if any("scaled_dot_product" in o for o in ops):
            return "attention"
        return "linear" if _LINEAR_OPS.intersection(ops) else "block_ops"
    if innermost == _RANGE + "head":
        return "head"
    if innermost == _RANGE + "embed":
        return "embed_norm"
    if innermost == _RANGE + "cache":
        return "cache_setup"
    return "sampling"  # an op outside every model: guidance, softmax, inverse CDF, uniforms


def profile_batch(pipe, labels_B: torch.Tensor, seeds: list[int], settings) -> tuple[dict[str, float], float]:
    """Sample one batch under torch.profiler (CPU activity); seconds per CATEGORIES key (self time
    of every op and range inside the batch, so the rows add up to the batch) and the batch's wall
    time. On a GPU this is host time (launches), not kernel time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = pipe.device
    with _profile_ranges(pipe), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        with record_function(_RANGE + "batch"):
            pipe.sample_codes(labels_B, seeds, settings)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    pipe.clear_caches()
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    for ev in prof.events():
        key = _category(ev)
        if key is not None:
            seconds[key] += ev.self_cpu_time_total / 1e6
    return seconds, wall


V_SIZED = ("head", "sampling")  # the rows whose work scales with the output vocabulary (V vs K)


def free_stage2_bound(results: list[SpeedResult]) -> dict[str, float]:
    """CTF / baseline images/s if stage 2 cost nothing: baseline s/batch over stage-1 s/batch, from
    the timed medians and from the two profiled batches (each profiled once, at different moments:
    noisy on a shared machine). "baseline_shares" needs the baseline's profile only: if stage 1 were
    the baseline without any head or sampling cost (the rest is the same network), it would take
    1 - (their share) of the baseline's time."""
    base, ctf = results
    out = {}
    if "stage1_s" in ctf.stage_s:
        out["timed"] = statistics.median(base.seconds) / statistics.median(ctf.stage_s["stage1_s"])
    if base.profile_s and ctf.profile_s:
        stage1 = sum(ctf.profile_s.values()) - ctf.profile_s["stage2"]
        out["profiled"] = sum(base.profile_s.values()) / stage1
    if base.profile_s:
        out["baseline_shares"] = 1 / (1 - v_sized_share(base))
    return out


def v_sized_share(r: SpeedResult) -> float:
    return sum(r.profile_s[k] for k in V_SIZED) / sum(r.profile_s.values())


def results_to_json(results: list[SpeedResult], info: dict) -> dict:
    B = info["batch_size"]
    out = {"info": info, "ratio_ctf_over_baseline": results[1].images_per_s(B) / results[0].images_per_s(B),
           "results": [{"name": r.name, "params": r.params, "images_per_s": r.images_per_s(B),
                        "seconds": r.seconds, "peak_mem_mb": r.peak_mem_mb, "stage_s": r.stage_s}
                       for r in results]}
    if all(r.profile_s for r in results):
        out["profile"] = {"categories": CATEGORIES, "free_stage2_bound": free_stage2_bound(results),
                          **{r.name: {"seconds": r.profile_s, "total_s": sum(r.profile_s.values()),
                                      "wall_s": r.profile_wall_s} for r in results}}
    return out
