"""The text tables `ctfgen bench train | aux-loss | speed` print; the benchmarks that measure what
they show are benchmarks/train_speed.py, benchmarks/aux_loss.py and benchmarks/speed.py."""
from __future__ import annotations

import statistics

from ...benchmarks.aux_loss import AuxLossRow
from ...benchmarks.speed import CATEGORIES, V_SIZED, SpeedResult, free_stage2_bound, v_sized_share
from ...benchmarks.speed_sweep import SweepCell
from ...benchmarks.train_speed import BenchRow


def train_table(rows: list[BenchRow], *, device: str, preset: str, batch_size: int, grid: int) -> str:
    """`bench train`'s table: tokens/s and memory of ar, aux and the baseline, and their ratios."""
    head = (f"training throughput, preset {preset}, batch {batch_size}, {grid}x{grid} tokens, {device}\n"
            f"{'model':<10}{'vocab in/out':>14}{'params':>12}{'tokens/s':>12}{'step ms':>10}"
            f"{'static MB':>11}{'step peak MB':>14}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.kind:<10}{f'{r.vocab_in}/{r.vocab_out}':>14}{r.params:>12,}{r.tokens_per_s:>12,.0f}"
                     f"{r.step_ms:>10.1f}{r.static_mb:>11.1f}{r.step_peak_mb:>14.1f}")
    ar, aux, base = rows
    lines.append(f"ratio ar/baseline: tokens/s {_ratio(ar.tokens_per_s, base.tokens_per_s)}, "
                 f"static memory {_ratio(ar.static_mb, base.static_mb)}, "
                 f"step peak memory {_ratio(ar.step_peak_mb, base.step_peak_mb)}")
    lines.append(f"CTF (ar + aux) / baseline step time: {_ratio(ar.step_ms + aux.step_ms, base.step_ms)}")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    # a CPU step can leave peak RSS unchanged (0 MB growth): no ratio then, rather than a crash
    return f"x{a / b:.2f}" if b and b == b and a == a else "n/a"


def aux_loss_table(rows: list[AuxLossRow], *, device: str, preset: str, vocab: int, k: int, batch_size: int,
                   grid: int, clusters: str = "balanced") -> str:
    """`bench aux-loss`'s table: head and whole-step milliseconds of each formulation."""
    lines = [f"stage-2 loss formulations: {preset}, V {vocab}, K {k} ({clusters} clusters, largest "
             f"{rows[0].max_cluster}, mean {vocab / k:g}), batch {batch_size} x {grid * grid} tokens, {device}",
             f"{'impl':<8}{'head ms':>10}{'step ms':>10}{'peak MB':>10}{'loss':>10}"]
    for r in rows:
        lines.append(f"{r.impl:<8}{r.head_ms:>10.1f}{r.step_ms:>10.1f}{r.peak_mb:>10.0f}{r.loss:>10.4f}")
    best = min(rows, key=lambda r: r.step_ms if r.step_ms == r.step_ms else r.head_ms)
    lines.append(f"fastest: {best.impl}")
    return "\n".join(lines)


def profile_table(results: list[SpeedResult]) -> str:
    """The profile table (seconds and % of the profiled batch per category) and what it implies.
    results[0] is the baseline, the rest CTF pipelines (bench speed: one; the sweep: one per depth)."""
    base, ctfs = results[0], results[1:]
    totals = [sum(r.profile_s.values()) for r in results]
    lines = ["profile of one more batch each (torch.profiler, CPU; self time of each op and Python range):",
             f"{'':<36}" + "".join(f"{r.name:>18}" for r in results)]
    for key, label in CATEGORIES.items():
        cells = [f"{r.profile_s[key]:9.3f} s {100 * r.profile_s[key] / t:5.1f}%" for r, t in zip(results, totals)]
        lines.append(f"{label:<36}" + "".join(f"{c:>18}" for c in cells))
    lines.append(f"{'total':<36}" + "".join(f"{t:9.3f} s {100.0:5.1f}%" for t in totals))
    # the profiler slows each op a little; compare the profiled batch with the timed ones
    lines.append("profiled batch wall: " + ", ".join(f"{r.name} {r.profile_wall_s:.2f} s" for r in results)
                 + " (timed medians " + ", ".join(f"{statistics.median(r.seconds):.2f}" for r in results) + " s)")
    for ctf, total in zip(ctfs, totals[1:]):
        named = f"{ctf.name}: " if len(ctfs) > 1 else ""
        stage1 = total - ctf.profile_s["stage2"]
        diff = {k: ctf.profile_s[k] - base.profile_s[k] for k in V_SIZED}
        lines.append(f"{named}stage 1 - baseline: {stage1 - totals[0]:+.2f} s/batch (head {diff['head']:+.2f}, "
                     f"sampling ops {diff['sampling']:+.2f}); stage 2 adds {ctf.profile_s['stage2']:.2f} s")
        bound = free_stage2_bound([base, ctf])
        lines.append(f"{named}CTF / baseline with a free stage 2 = baseline_s / stage1_s: "
                     f"{bound['timed']:.2f}x (timed medians), {bound['profiled']:.2f}x (profiled batches)")
    lines.append(f"the baseline's head + sampling ops are {100 * v_sized_share(base):.1f}% of its profiled batch: "
                 f"a stage 1 without any would be at most {free_stage2_bound([base, ctfs[0]])['baseline_shares']:.2f}x")
    return "\n".join(lines)


def speed_table(results: list[SpeedResult], info: dict) -> str:
    """`bench speed`'s table: images/s, seconds per batch and peak memory of each sampler, their ratio,
    and the profile when it was taken."""
    B = info["batch_size"]
    mem = "peak RSS" if info["device"].startswith("cpu") else "peak CUDA alloc"
    lines = [f"bench speed: preset {info['preset']} (stage 1 / baseline {info['model']}, stage 2 {info['aux']}, "
             f"V={info['vocab']}, K={info['k']}, {info['grid']}x{info['grid']} tokens), batch {B}, "
             f"CFG {info['guidance_scale']}, {info['device']}, {info['dtype']}"
             f"{', compiled (' + str(info['compile']) + ')' if info['compile'] else ''}; median of {info['runs']} after {info['warmup']} warm-up",
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
    if base.profile_s and ctf.profile_s:
        lines.append(profile_table(results))
    return "\n".join(lines)


def sweep_cell_table(cell: SweepCell, info: dict) -> str:
    """One cell of `bench speed --sweep`: each sampler's images/s, ratio to the baseline, s/batch, stage
    timings and peak memory, then the profile when it was taken."""
    B = info["batch_size"]
    mem = "peak RSS" if info["device"].startswith("cpu") else "peak CUDA alloc"
    lines = [f"{cell.width} ({cell.stage1_layers} layers), {cell.grid}x{cell.grid} tokens, V={info['vocab']}, "
             f"K={info['k']}: median of {info['runs']} interleaved batches of {B} after {info['warmup']} warm-up "
             f"(1-min load average {cell.loadavg[0]:.1f} -> {cell.loadavg[-1]:.1f})",
             f"{'sampler':<12}{'stage 2':>9}{'params':>16}{'images/s':>10}{'ratio':>8}{'s/batch':>9}"
             f"{'stage 1 s':>11}{'stage 2 s':>11}{mem:>16}  runs (s)"]
    for name, r in cell.results.items():
        ctf = name != "baseline"
        layers = f"{cell.stage2_layers[cell.ctf_names.index(name)]} layers" if ctf else "-"
        stages = [f"{statistics.median(r.stage_s[k]):.2f}" if ctf else "-" for k in ("stage1_s", "stage2_s")]
        params = "+".join(f"{v / 1e6:.1f}M" for v in r.params.values())
        lines.append(f"{name:<12}{layers:>9}{params:>16}{r.images_per_s(B):>10.2f}{cell.ratio(name, B):>7.2f}x"
                     f"{statistics.median(r.seconds):>9.2f}{stages[0]:>11}{stages[1]:>11}{r.peak_mem_mb:>13.0f} MB  "
                     + " ".join(f"{s:.2f}" for s in r.seconds))
    if all(r.profile_s for r in cell.results.values()):
        lines.append(profile_table(list(cell.results.values())))
    return "\n".join(lines)


def sweep_table(cells: list[SweepCell], info: dict) -> str:
    """`bench speed --sweep`'s summary: CTF / baseline images/s per (width, tokens) and stage-2 depth,
    measured and with stage 1 pooled (`SweepCell.pooled_ratio`), and the baseline's time over stage
    1's (what CTF would gain with a free stage 2)."""
    B = info["batch_size"]
    depths = "".join(f"{'ctf-' + d:>10}" for d in info["depths"])
    lines = [f"bench speed sweep: V={info['vocab']}, K={info['k']}, batch {B}, CFG {info['guidance_scale']}, "
             f"{info['device']}, {info['dtype']}; stage 1 = baseline size, stage 2 at the same width with "
             f"{', '.join(info['depths'])} x stage 1's layers",
             "CTF / baseline images/s per stage-2 depth: measured (each pipeline's median), then with stage 1 "
             "pooled over the cell's CTF runs; stage-1 bound = baseline s / pooled stage-1 s, the ratio if "
             "stage 2 cost nothing:",
             f"{'width':<8}{'tokens':>7}{'baseline img/s':>16}{depths}  |{depths}{'stage-1 bound':>15}"]
    for c in cells:
        base = c.results["baseline"]
        lines.append(f"{c.width:<8}{c.grid * c.grid:>7}{base.images_per_s(B):>16.2f}"
                     + "".join(f"{c.ratio(n, B):>9.2f}x" for n in c.ctf_names) + "  |"
                     + "".join(f"{c.pooled_ratio(n):>9.2f}x" for n in c.ctf_names)
                     + f"{statistics.median(base.seconds) / c.stage1_s():>14.2f}x")
    return "\n".join(lines)
