"""`ctfgen bench speed`: images/s of CTF (stage 1 + stage 2) and the baseline at the same stage-1 size.

Random weights (speed does not depend on them), batch 64 with guidance (128 sequences through the
cache), both samplers in one process, runs interleaved after a warm-up, median per sampler. Times
cover token sampling (codes), not the VQ decoder, which both share; LlamaGen's generate() figures
in ANCHORS.md are measured the same way.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

from ..errors import CtfgenError
from ..models import build_model
from .pipeline import BaselinePipeline, CTFPipeline
from .sampler import sample_seed

# stage-1 / baseline size, stage-2 size, codebook V, clusters K, tokens per side, classes
PRESETS = {
    "fmnist": dict(model="small", aux="small", vocab=4096, k=128, grid=8, num_classes=10),
    "B": dict(model="B", aux="aux-B", vocab=16384, k=512, grid=16, num_classes=1000),
}


@dataclass
class SpeedResult:
    name: str
    params: dict[str, int]
    seconds: list[float] = field(default_factory=list)  # per timed batch
    peak_mem_mb: float = 0.0  # CUDA: max allocated; CPU: peak RSS of the process during its runs
    stage_s: dict[str, list[float]] = field(default_factory=dict)

    def images_per_s(self, batch_size: int) -> float:
        return batch_size / statistics.median(self.seconds)


class _PeakRSS:
    """Polls the process's resident memory in a thread (CPU peak memory of one sampler's runs)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best there is
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every_s)

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _model(kind: str, preset: str, cfg: dict, seed: int, **extra):
    torch.manual_seed(seed)
    m = build_model(kind, preset, vocab_size=cfg["vocab"], num_classes=cfg["num_classes"], grid=cfg["grid"],
                    coarse_vocab=None if kind == "baseline" else cfg["k"], **extra)
    with torch.no_grad():  # the head starts at zero; random values give realistic, non-uniform choices
        m.output.weight.normal_(0.0, 0.02)
    return m.eval()


def build_pipelines(preset: str = "fmnist", *, aux_preset: str | None = None, device="cpu",
                    dtype: torch.dtype | None = None, compile: bool = False, seed: int = 0):
    if preset not in PRESETS:
        raise CtfgenError(f"bench speed: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset], **({"aux": aux_preset} if aux_preset else {}))
    g = torch.Generator().manual_seed(seed)
    c2c = torch.randperm(cfg["vocab"], generator=g) % cfg["k"]  # balanced random clusters
    ar = _model("ar", cfg["model"], cfg, seed)
    aux = _model("aux", cfg["aux"], cfg, seed + 1, code_to_coarse=c2c)
    baseline = _model("baseline", cfg["model"], cfg, seed + 2)
    kw = dict(dtype=dtype, compile=compile)
    ctf = CTFPipeline(None, ar=ar.to(device), aux=aux.to(device), **kw)
    base = BaselinePipeline(None, baseline=baseline.to(device), **kw)
    return ctf, base, cfg


def bench_speed(preset: str = "fmnist", *, batch_size: int = 64, runs: int = 3, warmup: int = 1,
                guidance_scale: float = 2.0, aux_preset: str | None = None, device="cpu",
                dtype: torch.dtype | None = None, compile: bool = False, seed: int = 0,
                progress: bool = True) -> tuple[list[SpeedResult], dict]:
    """Time `runs` batches of each sampler, alternating which goes first, after `warmup` rounds."""
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
    rounds = range(warmup + runs)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=f"bench speed {preset}")
    for r in rounds:
        for name in (("baseline", "ctf") if r % 2 == 0 else ("ctf", "baseline")):
            pipe, res = pipes[name], results[name]
            seeds = [sample_seed(seed + r, i) for i in range(batch_size)]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            with _PeakRSS() as mem:
                t0 = time.perf_counter()
                pipe.sample_codes(labels_B, seeds, settings[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                for m in pipe.models.values():  # each call sets up its cache, as a real call does
                    if hasattr(m, "clear_cache"):
                        m.clear_cache()
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else mem.peak
            res.peak_mem_mb = max(res.peak_mem_mb, peak / 2**20)
            if r >= warmup:
                res.seconds.append(dt)
                for k, v in getattr(pipe, "last_timings", {}).items():
                    res.stage_s.setdefault(k, []).append(v)
    info = {"preset": preset, **cfg, "batch_size": batch_size, "runs": runs, "warmup": warmup,
            "guidance_scale": guidance_scale, "device": _device_name(device),
            "dtype": str(dtype or torch.float32).replace("torch.", ""), "compile": compile,
            "sampling": {n: vars(s) for n, s in settings.items()}}
    return [results["baseline"], results["ctf"]], info


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def format_results(results: list[SpeedResult], info: dict) -> str:
    B = info["batch_size"]
    mem = "peak RSS" if info["device"].startswith("cpu") else "peak CUDA alloc"
    lines = [f"bench speed: preset {info['preset']} (stage 1 / baseline {info['model']}, stage 2 {info['aux']}, "
             f"V={info['vocab']}, K={info['k']}, {info['grid']}x{info['grid']} tokens), batch {B}, "
             f"CFG {info['guidance_scale']}, {info['device']}, {info['dtype']}"
             f"{', compiled' if info['compile'] else ''}; median of {info['runs']} after {info['warmup']} warm-up",
             f"{'sampler':<10}{'params':>14}{'images/s':>10}{'s/batch':>10}{mem:>18}  runs (s)"]
    for r in results:
        params = "+".join(f"{v / 1e6:.1f}M" for v in r.params.values())
        lines.append(f"{r.name:<10}{params:>14}{r.images_per_s(B):>10.2f}{statistics.median(r.seconds):>10.2f}"
                     f"{r.peak_mem_mb:>15.0f} MB  " + " ".join(f"{s:.2f}" for s in r.seconds))
    base, ctf = results
    if ctf.stage_s:
        lines.append("ctf stages (median s/batch): " + ", ".join(
            f"{k.replace('_s', '')} {statistics.median(v):.2f}" for k, v in ctf.stage_s.items()))
    lines.append(f"ratio CTF / baseline images/s: {ctf.images_per_s(B) / base.images_per_s(B):.2f}x")
    return "\n".join(lines)


def results_to_json(results: list[SpeedResult], info: dict) -> dict:
    B = info["batch_size"]
    return {"info": info, "ratio_ctf_over_baseline": results[1].images_per_s(B) / results[0].images_per_s(B),
            "results": [{"name": r.name, "params": r.params, "images_per_s": r.images_per_s(B),
                         "seconds": r.seconds, "peak_mem_mb": r.peak_mem_mb, "stage_s": r.stage_s}
                        for r in results]}


# ---------------------------------------------------------------- CLI: `ctfgen bench speed`

def add_cli(group) -> None:
    """Register `ctfgen bench speed` in the bench group (called from cli/bench.py)."""
    p = group.add_parser(
        "speed", help="sampling images/s and memory of CTF vs the baseline at the same stage-1 size",
        description="Sample batches with CTF (stage 1 + stage 2) and the baseline, random weights, guidance on, "
                    "interleaved after a warm-up; print the median images/s, peak memory and their ratio.")
    p.add_argument("--preset", default="fmnist", choices=sorted(PRESETS),
                   help="fmnist: small GPT, V 4096, K 128, 8x8 tokens; B: GPT-B, V 16384, K 512, 16x16 (default: fmnist)")
    p.add_argument("--aux-preset", help="stage-2 size (default: fmnist small, B aux-B)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--runs", type=int, default=3, help="timed batches per sampler (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--guidance-scale", "--cfg", type=float, default=2.0, help="guidance of both (default: 2.0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="model dtype (bf16: for GPUs)")
    p.add_argument("--compile", action="store_true", help="compiled decoding (GPU, untested)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    from ..artifacts import atomic_write_json
    from ..train.dist import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    results, info = bench_speed(args.preset, batch_size=args.batch_size, runs=args.runs, warmup=args.warmup,
                                guidance_scale=args.guidance_scale, aux_preset=args.aux_preset,
                                device=resolve_device(args.device),
                                dtype=torch.bfloat16 if args.dtype == "bf16" else None, compile=args.compile)
    print(format_results(results, info))
    if args.json:
        atomic_write_json(args.json, results_to_json(results, info))
    return 0
