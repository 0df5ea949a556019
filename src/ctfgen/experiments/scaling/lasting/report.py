"""The report of `ctfgen bench lasting`, made from the unit JSONs of a results directory alone (so it can
be rewritten from committed results): RESULTS_DIR/report/README.md, summary.json and plots.

Units of one recipe (everything but the pipeline seed) are averaged (mean ± std across pipeline seeds)
and paired by seed: CTF − baseline with the 95% Student-t interval of the per-seed differences. The
fitted asymptote's interval is the same t-interval across seeds (each fit's own standard error is in
the unit JSON). Planned units without results are listed, so a partial study says what it lacks.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from ....artifacts import atomic_write_bytes, atomic_write_json
from ...reporting import markdown_table, pyplot, save_figure
from ..report import fmt, mean_std, paired, verdict

METHODS = ("ctf", "ctf-uniform", "baseline")
NAMES = {"ctf": "CTF (learned stage 2)", "ctf-uniform": "CTF (uniform stage 2)", "baseline": "baseline"}
STYLE = {"ctf": "-o", "ctf-uniform": ":^", "baseline": "-s"}
LOWER = ("CTF lower", "baseline lower")


def load_units(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))]


def measures(u: dict, m: str) -> dict[str, float]:
    """The per-seed figures of method `m` in unit `u` that the tables average and pair."""
    out = {}
    if m in u["best"]:
        out["best_val"] = u["best"][m]["bits_per_token"]
        out["best_step"] = u["best"][m]["step"]
        out["test"] = u["test"][m]["bits_per_token"]
    if u["fit"].get(m, {}).get("ok"):
        out["L_inf"] = u["fit"][m]["L_inf"]
    if "equal_compute" in u.get("baseline_matches", {}).get(m, {}):  # where the cheaper run ends: both there
        out["compute_gap"] = u["baseline_matches"][m]["equal_compute"]["gap"]
        out["end_gap"] = u["curves"][m][-1]["bits_per_token"] - u["curves"]["baseline"][-1]["bits_per_token"]
    for pick in ("best", "default"):
        metrics = (u.get("samples", {}).get(m) or {}).get(pick, {}).get("metrics", {})
        if "fid_classifier" in metrics:
            out[f"fid_{pick}"] = metrics["fid_classifier"]
    return out


def by_recipe(units: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for u in units:
        groups[u["recipe"]].append(u)
    return {k: sorted(v, key=lambda u: u["seed"]) for k, v in sorted(groups.items())}


def pair(us: list[dict], a: str, b: str, key: str) -> dict:
    """Paired a − b of one measure over the seeds where both have it (a measure that is already a
    paired difference, e.g. "compute_gap", has b's value 0)."""
    xs = [(measures(u, a).get(key), measures(u, b).get(key, 0.0 if key.endswith("_gap") else None)) for u in us]
    xs = [(x, y) for x, y in xs if x is not None and y is not None]
    return paired([x for x, _ in xs], [y for _, y in xs])


def _row_values(us: list[dict], m: str, key: str) -> list[float]:
    return [v for v in (measures(u, m).get(key) for u in us) if v is not None]


def recipe_section(recipe: str, us: list[dict]) -> tuple[list[str], dict]:
    u0 = us[0]
    L = [f"### {recipe}", "",
         f"V = {u0['V']}, K = {u0['K']}, {u0['tokens']} tokens ({u0['grid']}x{u0['grid']}), preset {u0['preset']}, "
         f"{u0['steps']} steps of {u0['batch']} ({u0['steps'] * u0['batch']:,} sequences{_epochs(u0)}), pipeline seeds "
         f"{[u['seed'] for u in us]}; validation every {u0['schedule']['eval_every']} steps, decay from step "
         f"{u0['schedule']['decay_start']}.", ""]
    t = [["method", "seeds", "FLOPs/step", "best val bits/token", "at step", "test bits/token (best ckpt)",
          "fitted L_inf", "classifier-FID (best settings)", "classifier-FID (paper defaults)"]]
    methods = [m for m in METHODS if m in u0["best"]]
    for m in methods:
        t.append([NAMES[m], str(len(us)), f"{u0['flops_per_step'][m]:.3g}", fmt(_row_values(us, m, "best_val"), 4),
                  ", ".join(str(int(s)) for s in _row_values(us, m, "best_step")), fmt(_row_values(us, m, "test"), 4),
                  fmt(_row_values(us, m, "L_inf"), 4), fmt(_row_values(us, m, "fid_best")),
                  fmt(_row_values(us, m, "fid_default"))])
    L += [markdown_table(t), ""]
    summary = {"V": u0["V"], "grid": u0["grid"], "tokens": u0["tokens"], "preset": u0["preset"], "steps": u0["steps"],
               "batch": u0["batch"], "seeds": [u["seed"] for u in us], "params": u0["params"], "paired": {}}
    t = [["comparison (paired by seed)", "test bits/token (best ckpts)", "val bits/token, equal steps (end)",
          "val bits/token, equal FLOPs", "fitted L_inf", "classifier-FID (best)", "baseline matches it at step",
          "... at training FLOPs"]]
    noise = "pipeline-seed noise"
    for m in (x for x in methods if x != "baseline"):
        p = {k: pair(us, m, "baseline", k) for k in ("test", "end_gap", "compute_gap", "L_inf", "fid_best")}
        summary["paired"][m] = p
        steps = [u["baseline_matches"][m]["step"] for u in us]
        flops = [u["baseline_matches"][m]["flops"] for u in us]
        cells = [verdict(p[k], *words, noise) if p[k]["n"] else "–" for k, words in (
            ("test", LOWER), ("end_gap", LOWER), ("compute_gap", LOWER), ("L_inf", LOWER),
            ("fid_best", ("CTF better", "baseline better")))]
        t.append([f"{NAMES[m]} − baseline", *cells, ", ".join(_step_epoch(u0, s) for s in steps),
                  ", ".join("never" if f is None else f"{f:.3g}" for f in flops)])
        summary["paired"][m]["baseline_matches"] = {"step": steps, "flops": flops}
    L += [markdown_table(t), "", "Equal steps: the validation curves at their last point; equal FLOPs: both curves "
          "at the training FLOPs where the cheaper method's run ends (the other interpolated in log FLOPs).", "",
          f"![curves]({_slug(recipe)}.png)", ""]
    return L, summary


def _epoch(u: dict, step: int) -> float | None:
    """Epochs of the unit's training images after `step` steps (None: the unit does not record them)."""
    n = u.get("train_images")
    return step * u["batch"] / n if n else None


def _step_epoch(u: dict, step: int | None) -> str:
    """"never", or the step with its epoch ("500 (0.8 ep)")."""
    if step is None:
        return "never"
    e = _epoch(u, step)
    return str(step) if e is None else f"{step} ({e:.1f} ep)"


def _epochs(u: dict) -> str:
    e = _epoch(u, u["steps"])
    return "" if e is None else f", {e:.1f} epochs of {u['train_images']:,} images"


def trend_groups(summaries: dict, axis: str) -> dict[tuple, list[dict]]:
    """Recipes that differ along `axis` ("preset" or "tokens") alone, by the settings held fixed
    (a grid is part of the tokens); only groups of two or more, each sorted along the axis."""
    groups = defaultdict(list)
    for s in summaries.values():
        rest = tuple((k, s[k]) for k in ("V", "grid", "preset", "steps", "batch") if k != axis and not
                     (axis == "tokens" and k == "grid"))
        groups[rest].append(s)
    return {rest: sorted(ss, key=lambda s: _axis_value(s, axis)) for rest, ss in sorted(groups.items())
            if len(ss) > 1}


def _axis_value(s: dict, axis: str) -> int:
    return s["params"].get("baseline", 0) if axis == "preset" else s["tokens"]


def per_image(p: dict, tokens: int) -> dict:
    """A paired bits-per-token gap as bits per image: every figure times the tokens per image (exact:
    the token count is the same for every seed of a recipe)."""
    out = dict(p)
    for k in ("mean", "std"):
        if out.get(k) is not None:
            out[k] = out[k] * tokens
    if out.get("ci95"):
        out["ci95"] = [x * tokens for x in out["ci95"]]
    return out


def trend_section(title: str, groups: dict, axis: str, label: str) -> list[str]:
    """The paired test-bits gap of CTF against the baseline along one axis, from `trend_groups`. Along
    the sequence length the gap is also given per image: a token of a 16x16 grid codes a quarter of the
    pixels of one of an 8x8 grid, so per-token figures of different grids measure different things."""
    head = ["held fixed", label, "baseline parameters", "seeds", "CTF − baseline test bits/token (paired)"]
    t = [head + (["CTF − baseline test bits/image (paired)"] if axis == "tokens" else [])]
    for rest, ss in groups.items():
        for s in ss:
            p = s["paired"].get("ctf", {}).get("test")
            cells = [p, per_image(p, s["tokens"]) if p else None] if axis == "tokens" else [p]
            t.append([", ".join(f"{k}={v}" for k, v in rest), str(s[axis]), f"{s['params'].get('baseline', 0):,}",
                      str(len(s["seeds"])), *(verdict(c, "CTF lower", "baseline lower", "pipeline-seed noise")
                                              if c and c["n"] else "–" for c in cells)])
    if len(t) == 1:
        return [f"## {title}", "", f"No two recipes that differ in {label} alone have results yet.", ""]
    return [f"## {title}", "", markdown_table(t), ""]


def write_report(results_dir: str | Path, cfg=None, planned: list | None = None) -> Path:
    """RESULTS_DIR/report/README.md (+ plots, summary.json) from the unit JSONs there; `planned`: the
    units of the plan (config.Unit), those without results are listed as not run."""
    results_dir = Path(results_dir)
    rep = results_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    units = load_units(results_dir)
    groups = by_recipe(units)
    L = ["# Does CTF's advantage last? (`ctfgen bench lasting`)", "",
         "Every seed is a whole-pipeline seed (tokenizer, clustering and models). Intervals: 95% Student-t "
         "intervals of the paired per-seed differences; \"beyond the pipeline-seed noise\" when they exclude 0. "
         "Validation: held-out images of the training split; test: the test split, at each method's best "
         "validation checkpoint (early stopping).", ""]
    if cfg is not None:
        L += [f"Plan: `{', '.join(f'{k}={v}' for k, v in vars(cfg).items() if k != 'data')}`.", ""]
    L += ["## Tokenizers", ""]
    t = [["V", "grid", "pipeline seed", "test PSNR (dB)", "codes used", "usage", "levels (ch_mult)"]]
    seen = set()
    for u in sorted(units, key=lambda u: (u["V"], u["grid"], u["seed"])):
        if (u["V"], u["grid"], u["seed"]) not in seen:
            seen.add((u["V"], u["grid"], u["seed"]))
            tk = u["tokenizer"]
            t.append([str(u["V"]), f"{u['grid']}x{u['grid']}", str(u["seed"]), f"{tk['psnr_db']:.2f}",
                      str(tk["codes_used"]), f"{tk['codebook_usage']:.3f}", str(tk["vq"].get("ch_mult"))])
    L += [markdown_table(t) if len(t) > 1 else "No results yet.", "", "## Each recipe", ""]
    summaries = {}
    for recipe, us in groups.items():
        lines, summaries[recipe] = recipe_section(recipe, us)
        L += lines
        plot_curves(us, rep / f"{_slug(recipe)}.png")
    trends = {axis: trend_groups(summaries, axis) for axis in ("preset", "tokens")}
    L += trend_section("The gap against model size", trends["preset"], "preset", "preset")
    L += trend_section("The gap against sequence length", trends["tokens"], "tokens", "tokens")
    (rep / "gap-trends.png").unlink(missing_ok=True)  # a stale plot would outlive its table
    if any(trends.values()):
        plot_trends(trends, rep / "gap-trends.png")
        L += ["![gap against model size and sequence length](gap-trends.png)", ""]
    missing = [u.key for u in planned or [] if not (results_dir / f"{u.key}.json").is_file()]
    L += ["## What did not run", ""]
    L += [f"- {k}" for k in missing] if missing else ["Every planned unit has results."]
    atomic_write_json(rep / "summary.json", {"recipes": summaries, "not_run": missing})
    page = rep / "README.md"
    atomic_write_bytes(page, ("\n".join(L) + "\n").encode())
    return page


def _slug(recipe: str) -> str:
    return "curves-" + recipe


def _mean_curve(us: list[dict], m: str, x: str) -> tuple[list, list, list]:
    per_x = defaultdict(list)
    for u in us:
        for p in u["curves"].get(m, []):
            per_x[p[x]].append(p["bits_per_token"])
    xs = sorted(per_x)
    ms = [mean_std(per_x[k]) for k in xs]
    return xs, [a for a, _ in ms], [0.0 if math.isnan(b) else b for _, b in ms]


def plot_curves(us: list[dict], path: Path) -> None:
    """Validation bits per token against step and against training FLOPs (mean ± std over seeds)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, x, label in ((axes[0], "step", "training step"), (axes[1], "flops", "training FLOPs")):
        for m in METHODS:
            if m in us[0]["curves"]:
                xs, ys, sd = _mean_curve(us, m, x)
                ax.errorbar(xs, ys, yerr=sd, fmt=STYLE[m], capsize=2, markersize=3, label=NAMES[m])
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits per token")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # a decade's minor labels overlap
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(us[0]["recipe"], fontsize=9)
    save_figure(fig, path)


def plot_trends(trends: dict, path: Path) -> None:
    """The paired test-bits gap (CTF − baseline) against baseline parameters (bits per token) and
    against tokens (bits per image, see `trend_section`), one line per group of recipes that differ
    along that axis alone (`trend_groups`)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, axis, label, unit in ((axes[0], "preset", "baseline parameters", "token"),
                                  (axes[1], "tokens", "tokens per image", "image")):
        for rest, ss in trends[axis].items():
            pts = [(_axis_value(s, axis), per_image(s["paired"]["ctf"]["test"], s["tokens"]) if unit == "image"
                    else s["paired"]["ctf"]["test"]) for s in ss if s["paired"].get("ctf", {}).get("test", {}).get("n")]
            if not pts:
                continue
            err = [0 if p.get("ci95") is None else (p["ci95"][1] - p["ci95"][0]) / 2 for _, p in pts]
            ax.errorbar([x for x, _ in pts], [p["mean"] for _, p in pts], yerr=err, fmt="o-", capsize=3,
                        label=", ".join(f"{k}={v}" for k, v in rest))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"CTF − baseline test bits/{unit}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    save_figure(fig, path)
