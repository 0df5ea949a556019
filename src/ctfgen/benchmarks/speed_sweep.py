"""`ctfgen bench speed --sweep`: CTF against the baseline at one codebook (the paper's V = 16384,
K = 512 by default) across model widths, stage-2 depths and sequence lengths.

For each (token grid, width) cell: the baseline and stage 1 at the width's preset (stage 1 = the
baseline's size), and one CTF pipeline per stage-2 depth, a fraction of stage 1's layers at the same
width (the paper's ablation varies stage 2's size and finds quality barely moves). All of a cell's
samplers are timed in one interleaved loop after a warm-up (benchmarks/speed.py `time_interleaved`), so
each ratio CTF / baseline compares batches that ran under the same load; `profile` then splits one
more batch of each into speed.py's CATEGORIES, which says why a ratio is what it is.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ..dist import device_name
from ..errors import CtfgenError
from ..models.presets import PRESETS as MODEL_PRESETS
from ..models.presets import canonical_preset
from .speed import CATEGORIES, SpeedResult, free_stage2_bound, pipelines_for, profile_each, time_interleaved

WIDTHS = ("tiny", "small", "B")
DEPTHS = ("1/4", "1/2", "1")


def parse_depth(text: str) -> Fraction:
    """A stage-2 depth as a fraction of stage 1's layers: "1/4", "0.5" or "1"; refuses anything <= 0."""
    try:
        depth = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise CtfgenError(f"stage-2 depth: expected a fraction of stage 1's layers such as 1/4, 0.5 or 1, "
                          f"got {text!r}") from None
    if depth <= 0:
        raise CtfgenError(f"stage-2 depth: expected a fraction > 0 of stage 1's layers, got {text!r}")
    return depth


def stage2_layers(widths: Sequence[str], depths: Sequence[str]) -> dict[str, list[int]]:
    """Stage-2 layer counts per width, in `depths`' order. Refuses a depth that is not a whole number
    of layers (>= 1) at every width, before anything is built."""
    out = {}
    for width in widths:
        n = MODEL_PRESETS[canonical_preset(width)]["n_layer"]
        out[width] = []
        for text in depths:
            layers = n * parse_depth(text)
            if layers.denominator != 1:
                raise CtfgenError(
                    f"stage-2 depth {text}: {text} of {width}'s {n} layers is {layers} layers, not a whole number; "
                    f"use depths that divide every width's depth ("
                    + ", ".join(f"{w} {MODEL_PRESETS[canonical_preset(w)]['n_layer']}" for w in widths) + ")")
            out[width].append(int(layers))
    return out


@dataclass
class SweepCell:
    """One (grid, width) cell of the sweep: results["baseline"] and results["ctf-<depth>"]."""

    width: str
    grid: int
    stage1_layers: int
    depths: list[str]
    stage2_layers: list[int]
    results: dict[str, SpeedResult] = field(default_factory=dict)
    loadavg: list[float] = field(default_factory=list)  # 1-minute load average before and after the cell

    @property
    def ctf_names(self) -> list[str]:
        return [f"ctf-{d}" for d in self.depths]

    def ratio(self, name: str, batch_size: int) -> float:
        """images/s of results[name] over the baseline's."""
        return self.results[name].images_per_s(batch_size) / self.results["baseline"].images_per_s(batch_size)

    def stage1_s(self) -> float:
        """Median stage-1 seconds a batch over every CTF pipeline's runs: their stage 1 is one network."""
        return statistics.median(v for n in self.ctf_names for v in self.results[n].stage_s["stage1_s"])

    def pooled_ratio(self, name: str) -> float:
        """CTF / baseline images/s for CTF pipeline `name` with its stage 1 timed by the pooled median
        (`stage1_s`, 3x the runs of one pipeline on a three-depth sweep) plus its own stage-2 median:
        less noisy on a loaded machine than the pipeline's own median, which varies with its stage 1."""
        stage2 = statistics.median(self.results[name].stage_s["stage2_s"])
        return statistics.median(self.results["baseline"].seconds) / (self.stage1_s() + stage2)


def speed_sweep(*, widths: Sequence[str] = WIDTHS, depths: Sequence[str] = DEPTHS, grids: Sequence[int] = (8,),
                vocab: int = 16384, k: int = 512, num_classes: int = 10, batch_size: int = 64, runs: int = 3,
                warmup: int = 1, guidance_scale: float = 2.0, device="cpu", seed: int = 0, progress: bool = True,
                profile: bool = False,
                on_cell: Callable[[SweepCell, dict], None] | None = None) -> tuple[list[SweepCell], dict]:
    """Time every cell (grids outer, widths inner, so the short sequences finish first); `on_cell(cell,
    info)` after each (the command prints it and rewrites its JSON). Returns the cells and the
    settings they share. Errors (CtfgenError) for a bad width, depth, vocab/k or count, before any
    model is built."""
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise CtfgenError(f"bench speed: need runs >= 1, warmup >= 0, batch_size >= 1 (got {runs}, {warmup}, {batch_size})")
    if not 2 <= k < vocab:
        raise CtfgenError(f"bench speed: need 2 <= K < V (the coarse vocabulary is smaller than the codebook), "
                          f"got K={k}, V={vocab}")
    if not widths or not depths or not grids or min(grids) < 1:
        raise CtfgenError(f"bench speed: need at least one width, depth and grid >= 1 "
                          f"(got {list(widths)}, {list(depths)}, {list(grids)})")
    layers = stage2_layers(widths, depths)
    device = torch.device(device)
    info = {"vocab": vocab, "k": k, "num_classes": num_classes, "widths": list(widths), "depths": list(depths),
            "grids": list(grids), "batch_size": batch_size, "runs": runs, "warmup": warmup,
            "guidance_scale": guidance_scale, "device": device_name(device), "threads": torch.get_num_threads(),
            "dtype": "float32", "seed": seed, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    cells = []
    for grid in grids:
        for width in widths:
            cell = SweepCell(width, grid, MODEL_PRESETS[canonical_preset(width)]["n_layer"], list(depths),
                             layers[width])
            _run_cell(cell, info, device=device, progress=progress, profile=profile)
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell, info)
    return cells, info


def _run_cell(cell: SweepCell, info: dict, *, device, progress: bool, profile: bool) -> None:
    cfg = dict(model=cell.width, aux=cell.width, vocab=info["vocab"], k=info["k"], grid=cell.grid,
               num_classes=info["num_classes"])
    ctfs, base = pipelines_for(cfg, stage2_layers=cell.stage2_layers, device=device, seed=info["seed"])
    pipes = {"baseline": base, **dict(zip(cell.ctf_names, ctfs))}
    settings = {name: p.settings(guidance_scale=info["guidance_scale"]) for name, p in pipes.items()}
    info.setdefault("sampling", {n: vars(settings[n]) for n in ("baseline", cell.ctf_names[0])})
    cell.results = {name: SpeedResult(name, {r: m.num_params() for r, m in p.models.items()})
                    for name, p in pipes.items()}
    labels_B = torch.arange(info["batch_size"]) % info["num_classes"]
    cell.loadavg = [os.getloadavg()[0]]
    time_interleaved(pipes, cell.results, settings, labels_B, runs=info["runs"], warmup=info["warmup"],
                     seed=info["seed"], desc=f"{cell.width} {cell.grid}x{cell.grid}" if progress else None)
    if profile:
        profile_each(pipes, cell.results, settings, labels_B, seed=info["seed"] + info["warmup"] + info["runs"])
    cell.loadavg.append(os.getloadavg()[0])


def sweep_to_json(cells: list[SweepCell], info: dict) -> dict:
    """The sweep as JSON: `info`, then one row per cell with each sampler's images/s, ratio to the
    baseline (and, for CTF, `SweepCell.pooled_ratio`), seconds per timed batch, stage timings (CTF),
    peak memory, parameters and, when profiled, seconds per CATEGORIES key."""
    B = info["batch_size"]
    rows = []
    for c in cells:
        samplers = []
        for name, r in c.results.items():
            ctf = name != "baseline"
            entry = {"name": name, "stage2_depth": c.depths[c.ctf_names.index(name)] if ctf else None,
                     "stage2_layers": c.stage2_layers[c.ctf_names.index(name)] if ctf else None,
                     "params": r.params, "images_per_s": r.images_per_s(B), "ratio_to_baseline": c.ratio(name, B),
                     "median_s": statistics.median(r.seconds), "seconds": r.seconds, "peak_mem_mb": r.peak_mem_mb,
                     "stage_s": r.stage_s}
            if ctf:
                entry["ratio_pooled_stage1"] = c.pooled_ratio(name)
            if r.profile_s:
                entry["profile"] = {"seconds": r.profile_s, "total_s": sum(r.profile_s.values()),
                                    "wall_s": r.profile_wall_s}
                if ctf:
                    entry["profile"]["free_stage2_bound"] = free_stage2_bound([c.results["baseline"], r])
            samplers.append(entry)
        rows.append({"width": c.width, "grid": c.grid, "tokens": c.grid * c.grid, "stage1_layers": c.stage1_layers,
                     "loadavg_1min": c.loadavg, "samplers": samplers})
    return {"info": info, "categories": CATEGORIES, "rows": rows}
