"""Sampling speed at the paper's sizes, beside the paper's A100 figures, through `bench_speed`
(random weights, batch 64, guidance 2.0, CTF and the baseline interleaved, median of the timed
batches), in fp32 and bf16, eager and with compiled decoding; and, for a target missed, a
profile of one batch on the device (which kernels the time goes to, and how busy the GPU was)."""
from __future__ import annotations

import time

import torch

# images/s on one A100 at batch 64 (the paper's table): LlamaGen and CTF
PAPER_A100 = {"baseline": {"B": 13.75, "L": 7.50, "XL": 5.32}, "ctf": {"B": 12.83, "L": 8.71, "XL": 6.26}}


def time_sampling(preset: str, *, dtype: str, compile: str | None, batch_size: int, runs: int, warmup: int,
                  device: torch.device, aux_preset: str | None = None, guidance_scale: float = 2.0) -> dict:
    from ..speed import bench_speed

    t0 = time.perf_counter()
    results, info = bench_speed(preset, batch_size=batch_size, runs=runs, warmup=warmup,
                                guidance_scale=guidance_scale, aux_preset=aux_preset, device=device,
                                dtype=torch.bfloat16 if dtype == "bf16" else None, compile=compile,
                                progress=False)
    rows = {}
    for r in results:
        paper = PAPER_A100[r.name].get(preset)
        ips = r.images_per_s(batch_size)
        rows[r.name] = {"images_per_s": ips, "seconds": r.seconds, "peak_mem_gib": r.peak_mem_mb / 1024,
                        "params": r.params, "stage_s": r.stage_s, "paper_a100": paper,
                        "x_paper": ips / paper if paper else None}
    return {"preset": preset, "dtype": dtype, "compile": compile, "batch_size": batch_size,
            "aux": info["aux"], "wall_s": time.perf_counter() - t0,
            "ctf_over_baseline": rows["ctf"]["images_per_s"] / rows["baseline"]["images_per_s"], **rows}


def profile_sampling(preset: str, *, dtype: str, compile: str | None, batch_size: int, device: torch.device,
                     aux_preset: str | None = None, top: int = 12) -> dict:
    """One warm batch of each sampler under torch.profiler (CPU and, on a GPU, CUDA activity)."""
    from ...sample.sampler import sample_seed
    from ..speed import build_pipelines

    ctf, base, cfg = build_pipelines(preset, aux_preset=aux_preset, device=device,
                                     dtype=torch.bfloat16 if dtype == "bf16" else None, compile=compile)
    labels_B = torch.arange(batch_size) % cfg["num_classes"]
    out = {}
    for name, pipe in (("baseline", base), ("ctf", ctf)):
        settings = pipe.settings(guidance_scale=2.0)
        seeds = [sample_seed(0, i) for i in range(batch_size)]
        pipe.sample_codes(labels_B, seeds, settings)  # warm: capture / compile outside the profile
        out[name] = profile_call(lambda: pipe.sample_codes(labels_B, seeds, settings), device, top=top)
        for m in pipe.models.values():
            if hasattr(m, "clear_cache"):
                m.clear_cache()
    return out


def profile_call(fn, device: torch.device, *, top: int = 12) -> dict:
    """Wall time, device-busy time (sum of kernel self times) and the top ops of one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    if device.type == "cuda":
        from torch.autograd import DeviceType

        # kernels only: a CPU op's own device time would count its kernels a second time
        ranked = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
        busy = sum(_device_s(e) for e in ranked)
        ranked.sort(key=_device_s, reverse=True)
        top_ops = [{"name": e.key, "calls": e.count, "self_s": _device_s(e)} for e in ranked[:top]]
    else:
        busy = None
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        top_ops = [{"name": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6} for e in ranked[:top]]
    return {"wall_s": wall, "device_busy_s": busy,
            "device_busy_share": busy / wall if busy is not None and wall > 0 else None, "top_ops": top_ops}


def _device_s(event) -> float:
    # the attribute was self_cuda_time_total before torch 2.4
    us = getattr(event, "self_device_time_total", None)
    return (us if us is not None else getattr(event, "self_cuda_time_total", 0.0)) / 1e6


def format_sampling(rows: list[dict]) -> list[str]:
    lines = ["| size | dtype | decoding | LlamaGen (baseline) images/s | paper A100 | x paper | CTF images/s | "
             "paper A100 | x paper | CTF / baseline | peak GiB (base / CTF) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, c = r["baseline"], r["ctf"]

        def x(v):
            return f"{v:.2f}x" if v is not None else "-"
        lines.append(f"| {r['preset']} | {r['dtype']} | {r['compile'] or 'eager'} | {b['images_per_s']:.2f} | "
                     f"{b['paper_a100'] or '-'} | {x(b['x_paper'])} | {c['images_per_s']:.2f} | {c['paper_a100'] or '-'} | "
                     f"{x(c['x_paper'])} | {r['ctf_over_baseline']:.2f}x | "
                     f"{b['peak_mem_gib']:.2f} / {c['peak_mem_gib']:.2f} |")
    return lines
