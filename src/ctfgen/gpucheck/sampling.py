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
    from ..sample.bench import bench_speed

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
    from ..sample.bench import build_pipelines
    from ..sample.sampler import sample_seed

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
    dev_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy = sum(getattr(e, dev_attr, 0.0) for e in events) / 1e6 if device.type == "cuda" else None
    ranked = sorted(events, key=lambda e: getattr(e, dev_attr, 0.0), reverse=True)[:top]
    return {"wall_s": wall, "device_busy_s": busy,
            "device_busy_share": busy / wall if busy is not None and wall > 0 else None,
            "top_ops": [{"name": e.key, "calls": e.count, "self_s": getattr(e, dev_attr, 0.0) / 1e6}
                        for e in ranked]}


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
