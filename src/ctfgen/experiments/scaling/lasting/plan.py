"""`ctfgen bench lasting --plan`: the units of a plan, which have results, and a rough cost of the rest.

The cost is model FLOPs (benchmarks/gpucheck/flops.py's count) of everything a unit runs, divided by an effective
rate: training (forward + backward of every model, every step), the validation and test likelihoods
(forward passes), and sampling (a forward per token, doubled by guidance) of the sweep and the final
sets. Tokenizer training and encoding are added per new pipeline at a fixed time. Both rates are
stated in the table; they are rough (measured on this 2-core CPU, see RATES), good for scheduling,
not for reporting.
"""
from __future__ import annotations

from .config import LastingConfig, Unit
from .curves import train_flops_per_step

# Effective rates on this project's 2-core CPU, one thread per process: `ctfgen bench train --preset
# tiny --vocab 4096 --k 128 --threads 1` gave 1,923 / 1,549 / 1,186 tokens/s for stage 1 / stage 2 /
# the baseline, 10-13 GFLOP/s of model FLOPs, under a load average of 13 (five jobs sharing the cores);
# an idle machine is faster (--plan-gflops). A tokenizer (500 steps) and its encodings: minutes.
RATES = {"cpu_gflops": 12.0, "tokenizer_minutes": 8.0}


def unit_flops(cfg: LastingConfig, unit: Unit, methods: list[str], num_classes: int) -> dict[str, float]:
    """{"train", "nll", "sampling"}: model FLOPs of one unit."""
    from ....models.presets import make_config

    K = unit.V // cfg.k_ratio
    kw = dict(vocab_size=unit.V, num_classes=num_classes, grid=unit.grid)
    cfgs = {"ar": make_config("ar", unit.preset, coarse_vocab=K, **kw),
            "aux": make_config("aux", unit.preset, coarse_vocab=K, **kw),
            "baseline": make_config("baseline", unit.preset, **kw)}
    parts = {"ctf": ("ar", "aux"), "ctf-uniform": ("ar",), "baseline": ("baseline",)}
    kinds = sorted({k for m in methods for k in parts[m]})
    train = unit.steps * train_flops_per_step([cfgs[k] for k in kinds], unit.batch)
    # a forward pass is a third of a training step's FLOPs
    fwd_per_image = {m: train_flops_per_step([cfgs[k] for k in parts[m]], 1) / 3 for m in methods}
    evals = len(cfg.eval_steps())
    test_images = cfg.test_images or 10000
    nll = sum(f * (evals * cfg.val_images + test_images) for f in fwd_per_image.values())
    sampling = 0.0
    if cfg.sampling:
        grid = len(cfg.guidance.split(",")) * len(cfg.temperatures.split(","))
        for m, f in fwd_per_image.items():
            sweep = 0 if m == "ctf-uniform" or unit.seed >= cfg.sweep_seeds else grid + (
                len(cfg.stage2_temperatures.split(",")) if m == "ctf" else 0)
            images = num_classes * (sweep * cfg.sweep_samples_per_class + 2 * cfg.final_samples_per_class)
            sampling += 2 * f * images
    return {"train": train, "nll": nll, "sampling": sampling}


def plan_rows(study, gflops: float = RATES["cpu_gflops"]) -> list[dict]:
    """One row per unit of the study's plan: key, state, FLOPs and estimated CPU hours at `gflops`."""
    from ....data import load_dataset

    cfg = study.cfg
    num_classes = load_dataset(cfg.data, "test").num_classes
    methods = study.methods()
    rows, pipelines = [], set()
    for unit in study.units():
        done = study.finished(unit)
        started = (study.out / unit.models_dir).is_dir()
        f = unit_flops(cfg, unit, methods, num_classes)
        hours = sum(f.values()) / (gflops * 1e9) / 3600
        if unit.pipeline_dir not in pipelines and not (study.out / unit.pipeline_dir).is_dir():
            hours += RATES["tokenizer_minutes"] / 60
        pipelines.add(unit.pipeline_dir)
        rows.append({"unit": unit.key, "state": "done" if done else ("started" if started else "to do"), "gflops": gflops,
                     "train_pflops": f["train"] / 1e15, "eval_pflops": (f["nll"] + f["sampling"]) / 1e15,
                     "cpu_hours": 0.0 if done else hours})
    return rows


def plan_table(rows: list[dict]) -> str:
    from ...reporting import markdown_table

    t = [["unit", "state", "training PFLOPs", "evaluation PFLOPs", "CPU hours (estimate)"]]
    for r in rows:
        t.append([r["unit"], r["state"], f"{r['train_pflops']:.3f}", f"{r['eval_pflops']:.3f}", f"{r['cpu_hours']:.2f}"])
    left = sum(r["cpu_hours"] for r in rows)
    return (markdown_table(t) + f"\n\n{sum(r['state'] != 'done' for r in rows)} of {len(rows)} units left, about "
            f"{left:.1f} CPU hours at {rows[0]['gflops'] if rows else RATES['cpu_gflops']:g} GFLOP/s per process and {RATES['tokenizer_minutes']:g} "
            "min per new tokenizer (rough: for scheduling; units of different seeds can run as parallel processes).")
