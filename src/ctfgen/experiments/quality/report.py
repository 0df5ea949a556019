"""The quality bench's report: metrics of CTF and the baseline at each checkpoint (table + plots of
metric against training step) and one table per ablation, as OUT/report/README.md and index.html."""
from __future__ import annotations

import json
from pathlib import Path

from ...artifacts import atomic_write_bytes
from ..reporting import METRIC_ROWS, fmt_value, markdown_table, metric, pyplot, save_figure, timings_table, write_page

CURVE_METRICS = [(k, label, better) for k, label, better in METRIC_ROWS if k != "classifier_agreement"]


def checkpoint_table(curves: dict[str, list[dict]]) -> list[list[str]]:
    """One row per checkpoint: each metric for CTF and the baseline, and the FID ratios."""
    head = ["step"]
    for _, label, better in CURVE_METRICS:
        head += [f"{label} CTF", f"{label} baseline"]
    head += ["FID ratio CTF/baseline (Inception)", "FID ratio (classifier)"]
    rows = [head]
    for ctf, base in zip(curves["ctf"], curves["baseline"]):
        row = [str(ctf["metadata"]["train_steps"])]
        for key, _, _ in CURVE_METRICS:
            row += [fmt_value(metric(ctf, key)), fmt_value(metric(base, key))]
        for key in ("fid_inception", "fid_classifier"):
            a, b = metric(ctf, key), metric(base, key)
            row.append(fmt_value(a / b) if a is not None and b else "–")
        rows.append(row)
    return rows


def plot_curves(curves: dict[str, list[dict]], path: Path) -> Path:
    plt = pyplot()
    keys = [(k, label, b) for k, label, b in CURVE_METRICS
            if any(metric(r, k) is not None for runs in curves.values() for r in runs)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, (key, label, better) in zip(axes[0], keys):
        for name, style in (("ctf", "o-"), ("baseline", "s--")):
            pts = [(r["metadata"]["train_steps"], metric(r, key)) for r in curves[name] if metric(r, key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label="CTF" if name == "ctf" else "baseline")
        ax.set_title(f"{label} ({better} is better)", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    return save_figure(fig, path)


def ablation_table(rows: list[dict]) -> list[list[str]]:
    keys = [("fid_classifier", "classifier-FID"), ("is_classifier", "classifier-IS"), ("precision", "precision"),
            ("recall", "recall"), ("classifier_agreement", "class agreement")]
    out = [["variant", *(label for _, label in keys), "settings"]]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        out.append([r["variant"], *(fmt_value(r["metrics"].get(k)) for k, _ in keys), settings])
    return out


def write_quality_report(out: Path, *, cfg, curves: dict[str, list[dict]], ablations: dict[str, dict],
                         timings: dict) -> Path:
    from .ablations import ABLATIONS

    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, rep / "curves.png")
    last = max(r["metadata"]["train_steps"] for r in curves["ctf"])
    md = [
        "# ctfgen bench quality: CTF vs the baseline at equal training steps",
        "",
        f"Same codes and the same `{cfg.preset}` architecture for stage 1 and the baseline (stage 2 the same size), "
        f"each trained {cfg.steps} steps (batch {cfg.batch_size}, lr {cfg.lr} per 256, warm-up {cfg.warmup}, cosine), "
        f"evaluated at steps {', '.join(map(str, cfg.checkpoint_steps()))} on {cfg.samples_per_class} samples per "
        f"class each (seed {cfg.seed}) against {cfg.reference_images or 'all'} test-split images. "
        f"FID with the Inception network at: {cfg.inception} checkpoint(s).",
        "",
        "## Metrics at each checkpoint",
        "",
        markdown_table(checkpoint_table(curves)),
        "",
        "![metric against training step](curves.png)",
        "",
        f"## Samples at step {last} (10 per class, a row per class)",
        "",
        "| CTF | baseline |",
        "|---|---|",
        f"| ![CTF](samples-ctf-step{last}.png) | ![baseline](samples-baseline-step{last}.png) |",
        "",
    ]
    for name, table in ablations.items():
        md += [f"## Ablation: {ABLATIONS[name].title}", "", ABLATIONS[name].note(cfg), "",
               markdown_table(ablation_table(table["rows"])), ""]
    md += ["## Time taken (seconds)", "", timings_table(timings),
           "", "Every number comes from a JSON file in `evals/` that records its sampling settings, seeds, model "
           "fingerprints, networks and library versions. Settings: `quality_config.json`.", ""]
    page = write_page(rep, md)
    atomic_write_bytes(rep / "results.json", json.dumps(
        {"checkpoints": checkpoint_table(curves), "ablations": {n: t["rows"] for n, t in ablations.items()},
         "timings": timings}, indent=2).encode())
    return page
