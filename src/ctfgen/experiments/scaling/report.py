"""The scaling study's report: tables with mean ± std over seeds, paired differences against the
seed noise, and plots (bits per token against step for each V; FID ratio against V).

A difference "exceeds the seed noise" when the 95% Student-t interval of the paired per-seed
differences (CTF minus baseline, same seed) excludes 0; with one seed nothing can be said. The seeds
are training seeds or whole-pipeline seeds (tokenizer, clustering and models; results["seed_kind"]);
given the results of a study with the other kind, noise.py compares the two spreads.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ...artifacts import atomic_write_bytes, atomic_write_json
from ..reporting import markdown_table, pyplot, save_figure


def mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan"))


def fmt(xs: list[float], digits: int = 3) -> str:
    if not xs:
        return "–"
    m, s = mean_std(xs)
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def paired(a: list[float], b: list[float]) -> dict:
    """Mean and std of a - b over seeds, the 95% t-interval, and whether it excludes 0."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return {"n": len(d), "mean": d[0] if d else None, "exceeds_noise": None}
    from scipy.stats import t

    m, s = mean_std(d)
    half = float(t.ppf(0.975, len(d) - 1)) * s / math.sqrt(len(d))
    return {"n": len(d), "mean": m, "std": s, "ci95": [m - half, m + half], "exceeds_noise": bool(abs(m) > half)}


def verdict(p: dict, lower: str, higher: str, noise: str = "seed noise") -> str:
    if p["exceeds_noise"] is None:
        return f"{p['mean']:+.3f} (1 seed: no error bar)" if p["n"] == 1 else "no seeds"
    word = lower if p["mean"] < 0 else higher
    return (f"{p['mean']:+.3f} (95% CI {p['ci95'][0]:+.3f} .. {p['ci95'][1]:+.3f}, n={p['n']}): "
            + (f"**{word}**, beyond the {noise}" if p["exceeds_noise"] else f"within the {noise}"))


def collect(results: dict) -> dict:
    """{(V, clustering, method): {measure: {training seed: value}}}; measures: "nll_last", "curve<step>",
    stage 1 / stage 2 bits, "<pick>:<metric>" of the final sample sets, and "best_settings"."""
    rows: dict = defaultdict(lambda: defaultdict(dict))
    for u in results["units"]:
        seed = u["seed"]
        for name, curve in u["nll"].items():
            r = rows[(u["V"], u["clustering"], name)]
            for point in curve:
                r[f"curve{point['step']}"][seed] = point["bits_per_token"]
            last = curve[-1]
            if last["step"] == results["config"]["steps"]:
                r["nll_last"][seed] = last["bits_per_token"]
                for key in ("stage1_bits_per_token", "stage2_bits_per_token"):
                    if key in last:
                        r[key][seed] = last[key]
        for name, smp in u["samples"].items():
            r = rows[(u["V"], u["clustering"], name)]
            for pick in ("best", "default"):
                if pick in smp:
                    for key, v in smp[pick]["metrics"].items():
                        if isinstance(v, (int, float)):
                            r[f"{pick}:{key}"][seed] = float(v)
            r["best_settings"][seed] = smp["best_settings"]
    return rows


def vals(r: dict | None, key: str) -> list:
    """The values of one measure, in seed order ([] when absent)."""
    return [v for _, v in sorted(r[key].items())] if r and key in r else []


def common(a: dict | None, b: dict | None, key: str) -> tuple[list, list]:
    """Two methods' values of one measure over the training seeds both have (paired by seed)."""
    if not a or not b:
        return [], []
    seeds = sorted(set(a[key]) & set(b[key]))
    return [a[key][s] for s in seeds], [b[key][s] for s in seeds]


def _settings(s: dict) -> str:
    names = {"guidance_scale": "cfg", "temperature": "T", "stage2_temperature": "T2"}
    return ", ".join(f"{names[k]} {v:g}" for k, v in s.items())


def write_scaling_report(out: Path, results: dict, reference: dict | None = None) -> Path:
    """OUT/report/README.md, its plots and summary.json; `reference`: another study's results with the
    other kind of seeds, for the noise comparison."""
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    rows = collect(results)
    cfg = results["config"]
    kind = results.get("seed_kind", "training")
    noise = f"{kind}-seed noise"
    vocabs = sorted({k[0] for k in rows})
    what = ("whole-pipeline seeds: each seed trains its own tokenizer, clustering and models" if kind == "pipeline"
            else "training seeds: model initialisation and batch order; one tokenizer and clustering per V")
    L = ["# CTF against the baseline as the codebook grows", "",
         f"Configuration: `{', '.join(f'{k}={v}' for k, v in cfg.items() if k != 'data')}`.", "",
         f"Seeds: {what}.", ""]

    L += ["## Tokenizers", ""]
    t = [["V", "seed", "K", "test PSNR (dB)", "codes used", "usage", "perplexity"]]
    # results of training-seed studies before pipeline seeds are keyed by V alone
    toks = [tk if "V" in tk else {"V": int(key), "seed": 0, **tk} for key, tk in results["tokenizers"].items()]
    for tk in sorted(toks, key=lambda tk: (tk["V"], tk["seed"])):
        V = tk["V"]
        t.append([str(V), str(tk.get("seed", 0)), str(V // cfg["k_ratio"]), f"{tk['psnr_db']:.2f}",
                  str(tk["codes_used"]), f"{tk['codebook_usage']:.3f}", f"{tk['perplexity']:.0f}"])
    L += [markdown_table(t), ""]

    summary: dict = {"nll": {}, "fid_best": {}, "fid_default": {}}
    L += ["## Held-out bits per token (test split, last checkpoint, no guidance)", "",
          f"Mean ± std over {kind} seeds. CTF = stage 1 (coarse sequence) + stage 2 (fine given coarse).", ""]
    t = [["V", "K", "seeds", "CTF", "  stage 1", "  stage 2", "baseline", "CTF − baseline (paired)"]]
    for V in vocabs:
        ctf, base = rows.get((V, "kmeans", "ctf")), rows.get((V, "kmeans", "baseline"))
        a, b = common(ctf, base, "nll_last")
        if not a:
            continue
        p = paired(a, b)
        summary["nll"][V] = p
        t.append([str(V), str(V // cfg["k_ratio"]), str(len(a)), fmt(vals(ctf, "nll_last"), 4),
                  fmt(vals(ctf, "stage1_bits_per_token"), 4), fmt(vals(ctf, "stage2_bits_per_token"), 4),
                  fmt(vals(base, "nll_last"), 4), verdict(p, "CTF lower", "baseline lower", noise)])
    L += [markdown_table(t), "", "![bits per token against step](nll-curves.png)", ""]

    for pick, title in (("best", "each method at its best sampling settings"), ("default", "the paper's default settings")):
        L += [f"## Samples: {title}", ""]
        t = [["V", "seeds", "classifier-FID CTF", "classifier-FID baseline", "ratio CTF/baseline",
              "CTF − baseline (paired)", "classifier-IS CTF", "classifier-IS baseline", "precision CTF",
              "precision baseline", "recall CTF", "recall baseline"]]
        for V in vocabs:
            ctf, base = rows.get((V, "kmeans", "ctf")), rows.get((V, "kmeans", "baseline"))
            a, b = common(ctf, base, f"{pick}:fid_classifier")
            if not a:
                continue
            ratios = [x / y for x, y in zip(a, b)]
            p = paired(a, b)
            summary[f"fid_{pick}"][V] = {**p, "ratio": mean_std(ratios)}
            t.append([str(V), str(len(a)), fmt(a), fmt(b), fmt(ratios), verdict(p, "CTF better", "baseline better", noise),
                      *[fmt(vals(r, f"{pick}:{k}")) for k in ("is_classifier", "precision", "recall") for r in (ctf, base)]])
        L += [markdown_table(t), ""]
        if pick == "best":
            t = [["V", "CTF best settings", "baseline best settings"]]
            for V in vocabs:
                ctf, base = rows.get((V, "kmeans", "ctf")), rows.get((V, "kmeans", "baseline"))
                if ctf and base and ctf["best_settings"] and base["best_settings"]:
                    t.append([str(V), _settings(vals(ctf, "best_settings")[0]), _settings(vals(base, "best_settings")[0])])
            L += ["Settings picked by the sweep (classifier-FID on the sweep's samples):", "", markdown_table(t), "",
                  "![FID ratio against V](fid-ratio.png)", ""]
            if any(vals(rows.get((V, "kmeans", "ctf")), "best:fid_inception") for V in vocabs):
                t = [["V", "FID (Inception) CTF", "FID (Inception) baseline"]]
                for V in vocabs:
                    ctf, base = rows.get((V, "kmeans", "ctf")), rows.get((V, "kmeans", "baseline"))
                    if ctf and base:
                        t.append([str(V), fmt(vals(ctf, "best:fid_inception")), fmt(vals(base, "best:fid_inception"))])
                L += ["Inception FID of the best-setting sets:", "", markdown_table(t), ""]

    arms_V = cfg["arms_vocab"]
    arm_rows = [k for k in rows if k[0] == arms_V]
    if len(arm_rows) > 2:
        L += [f"## Arms at V = {arms_V}: clustering and stage 2", "",
              "Each row: held-out bits per token (stage 1 + stage 2) and the best-setting classifier-FID. "
              "uniform / frequency: the k-means stage 1 with a stage 2 that has no parameters; their sampling "
              "uses the learned CTF's stage-1 settings and stage-2 temperature 1.0.", ""]
        t = [["clustering", "stage 2", "seeds", "bits/token", "stage 1", "stage 2", "classifier-FID (best)",
              "precision", "recall"]]
        order = {"ctf": 0, "ctf-uniform": 1, "ctf-frequency": 2, "baseline": 9}
        for key in sorted(arm_rows, key=lambda k: (order.get(k[2], 5), k[1])):
            r = rows[key]
            s2 = "—" if key[2] == "baseline" else (key[2].split("-", 1)[1] if key[2] in ("ctf-uniform", "ctf-frequency")
                                                   else "learned")
            t.append(["— (baseline)" if key[2] == "baseline" else key[1], s2, str(len(vals(r, "nll_last"))),
                      fmt(vals(r, "nll_last"), 4), fmt(vals(r, "stage1_bits_per_token"), 4),
                      fmt(vals(r, "stage2_bits_per_token"), 4), fmt(vals(r, "best:fid_classifier")),
                      fmt(vals(r, "best:precision")), fmt(vals(r, "best:recall"))])
        L += [markdown_table(t), ""]

    noise_summary = None
    if reference is not None:
        from .noise import noise_table

        lines, noise_summary = noise_table(results, reference)
        L += lines
    plot_nll(rows, vocabs, rep / "nll-curves.png")
    plot_ratio(summary, rep / "fid-ratio.png")
    atomic_write_json(rep / "summary.json", {"seed_kind": kind, "noise": noise_summary,
                                             "summary": {k: {str(V): v for V, v in d.items()} for k, d in summary.items()}})
    page = rep / "README.md"
    atomic_write_bytes(page, ("\n".join(L) + "\n").encode())
    return page


def plot_nll(rows: dict, vocabs: list[int], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, max(1, len(vocabs)), figsize=(4.2 * max(1, len(vocabs)), 3.4), squeeze=False)
    for ax, V in zip(axes[0], vocabs):
        for name, style in (("ctf", "-o"), ("baseline", "-s"), ("ctf-uniform", ":"), ("ctf-frequency", "--")):
            r = rows.get((V, "kmeans", name))
            if not r:
                continue
            steps = sorted(int(k[5:]) for k in r if k.startswith("curve") and r[k])
            ms = [mean_std(vals(r, f"curve{s}")) for s in steps]
            m = [x[0] for x in ms]
            sd = [0 if math.isnan(x[1]) else x[1] for x in ms]
            ax.errorbar(steps, m, yerr=sd, fmt=style, capsize=3, label=name, markersize=4)
        ax.set_title(f"V = {V}")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out bits per token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_ratio(summary: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for pick, style in (("fid_best", "-o"), ("fid_default", "--s")):
        vs = sorted(summary[pick])
        if not vs:
            continue
        m = [summary[pick][V]["ratio"][0] for V in vs]
        sd = [0 if math.isnan(summary[pick][V]["ratio"][1]) else summary[pick][V]["ratio"][1] for V in vs]
        ax.errorbar(vs, m, yerr=sd, fmt=style, capsize=3, label=pick.replace("fid_", "") + " settings")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("codebook size V")
    ax.set_ylabel("classifier-FID ratio CTF / baseline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
