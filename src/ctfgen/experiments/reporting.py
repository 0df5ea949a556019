"""What the experiments' reports share (experiments/demo_report.py: the demo;
experiments/quality/report.py; experiments/scaling/report.py): the metric rows of an evaluation
result, table cells, Markdown tables, the HTML rendering of a page and figure files.

A metric `evaluate_images` adds to `result["metrics"]` reaches the demo's and the quality bench's
tables (and the quality bench's curves) by a row in METRIC_ROWS.
"""
from __future__ import annotations

import html
import io
import re
from pathlib import Path

from ..artifacts import atomic_write_bytes

METRIC_ROWS = [  # (key in result["metrics"], label, better)
    ("fid_inception", "FID (Inception)", "lower"),
    ("fid_classifier", "classifier-FID", "lower"),
    ("is_classifier", "classifier-IS", "higher"),
    ("precision", "precision", "higher"),
    ("recall", "recall", "higher"),
    ("classifier_agreement", "classifier agrees with the requested class", "higher"),
]


def metric(result: dict, key: str):
    """result["metrics"][key] of an evaluation result, None when it was not computed."""
    return result.get("metrics", {}).get(key)


def fmt_value(v) -> str:
    """A table cell: "–" for a missing value, three decimals for a float."""
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table; rows[0] is the header."""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def timings_table(timings: dict[str, float]) -> str:
    """The seconds of each step (timings.json) as a Markdown table."""
    return markdown_table([["step", "seconds"], *[[k, str(v)] for k, v in timings.items()]])


def write_page(folder: Path, md_lines: list[str]) -> Path:
    """folder/README.md and the same page as folder/index.html; the README's path."""
    page = folder / "README.md"
    atomic_write_bytes(page, "\n".join(md_lines).encode())
    atomic_write_bytes(folder / "index.html", html_page(md_lines).encode())
    return page


def html_page(md_lines: list[str]) -> str:
    """A plain rendering of a Markdown page for a browser (headings, images, tables, paragraphs)."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{_inline(c)}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                for i, row in enumerate(cells)) + "</table>")
            table.clear()

    for line in md_lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    title = next((line.lstrip("# ") for line in md_lines if line.startswith("#")), "ctfgen report")
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}img{image-rendering:pixelated;max-width:100%}</style>" + "\n".join(body))


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r"<img alt='\1' src='\2'>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """`fig` as a PNG at `path` (110 dpi, tight layout, written atomically); the figure is closed."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
