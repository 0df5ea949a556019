"""The demo's report folder: one Markdown page (and the same as HTML) tying together the sample
grids of CTF and the baseline, their metrics side by side, the loss curves and the timings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifacts import atomic_write_bytes, read_manifest
from .reporting import METRIC_ROWS, fmt_value, markdown_table, metric, timings_table, write_page

# the demo's coarse-to-fine figure (experiments/demo.py: Demo.coarse_figure) and the command that makes the same file
COARSE_FIGURE = "coarse-to-fine.png"
COARSE_FIGURE_COMMAND = ("ctfgen sample --pipeline {out}/pipeline-ctf --per-class 2 --seed {seed} --grid-scale 2 "
                         "--coarse-grid coarse-to-fine.png")

def metrics_table(results: dict[str, dict]) -> list[list[str]]:
    names = list(results)
    rows = [["metric", *names, "better"]]
    for key, label, better in METRIC_ROWS:
        values = [metric(results[n], key) for n in names]
        if all(v is None for v in values):
            continue
        rows.append([label, *(fmt_value(v) for v in values), better])
    speeds = [results[n].get("metadata", {}).get("images_per_second") for n in names]
    rows.append(["sampling speed (images/s, this machine)", *(fmt_value(s) for s in speeds), "higher"])
    return rows


def write_demo_report(out: Path, *, results: dict, runs: dict[str, Path], tokenizer: Path, timings: dict, cfg) -> Path:
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    for kind, folder in runs.items():
        if (folder / "loss_curve.png").is_file():
            shutil.copy2(folder / "loss_curve.png", rep / f"loss-{kind}.png")
    if (tokenizer / "reconstructions.png").is_file():
        shutil.copy2(tokenizer / "reconstructions.png", rep / "tokenizer-reconstructions.png")
    tok_report = read_manifest(tokenizer, "tokenizer")["info"].get("report", {})
    table = metrics_table(results)
    md = [
        "# ctfgen demo: CTF vs the LlamaGen baseline on Fashion-MNIST",
        "",
        "Same codes, same stage-1 architecture and training steps for CTF's stage 1 and the baseline; "
        f"{cfg.samples_per_class} class-balanced samples per class each, seed {cfg.seed}.",
        "",
        "## Samples (10 per class, a row per class)",
        "",
        "| CTF (stage 1 + stage 2) | baseline (full vocabulary) |",
        "|---|---|",
        "| ![CTF](samples-ctf.png) | ![baseline](samples-baseline.png) |",
        "",
        *_coarse_section(out, rep, cfg),
        "## Metrics",
        "",
        markdown_table(table),
        "",
        "Reference: the Fashion-MNIST test split. Full results (every setting, fingerprint and library "
        "version): `eval-ctf.json`, `eval-baseline.json` in the demo folder.",
        "",
        "## Tokenizer",
        "",
        f"Test-split PSNR {tok_report.get('psnr_db', float('nan')):.2f} dB, codebook usage "
        f"{100 * tok_report.get('codebook_usage', 0):.1f}% of {tok_report.get('codebook_size', '?')}, "
        f"perplexity {tok_report.get('perplexity', float('nan')):.0f}. Top row originals, bottom row reconstructions:",
        "",
        "![reconstructions](tokenizer-reconstructions.png)",
        "",
        "## Loss curves",
        "",
        *[f"![{k}](loss-{k}.png)" for k in runs if (rep / f"loss-{k}.png").is_file()],
        "",
        "## Time taken (seconds; steps reused from an earlier run keep the time they took then)",
        "",
        timings_table(timings),
        "",
        "Settings: `demo_config.json`. Rerunning `ctfgen demo` reuses every finished step.",
        "",
    ]
    page = write_page(rep, md)
    atomic_write_bytes(rep / "metrics.json", json.dumps({"table": table, "timings": timings}, indent=2).encode())
    return page


def _coarse_section(out: Path, rep: Path, cfg) -> list[str]:
    if not (rep / COARSE_FIGURE).is_file():
        return []
    return [
        "## Coarse to fine: what stage 1 decided and what stage 2 added",
        "",
        "Two CTF samples per class, a row per class. Each triplet: the coarse-label map stage 1 drew (one "
        "colour per cluster of the codebook), the coarse image (every token decoded from the member nearest its "
        "cluster's centroid in the codebook) and the final image after stage 2.",
        "",
        f"![coarse to fine]({COARSE_FIGURE})",
        "",
        f"The same figure: `{COARSE_FIGURE_COMMAND.format(out=out, seed=cfg.seed)}`",
        "",
    ]
