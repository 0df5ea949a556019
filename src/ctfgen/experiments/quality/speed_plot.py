"""Quality against sampling speed: measured classifier-FID of trained models (the scaling study's
results JSON, or the unit JSONs of a `bench lasting` results folder) beside measured images/s of the
same sizes (`ctfgen bench speed --sweep --json`).

Nothing here is estimated: a point needs both a quality figure and a speed figure for the same
method, codebook size V, width and token grid; everything else is listed as left out, with why.
Quality: each unit of the study's `units` list gives `V`, `seed` and, per method,
samples[method]["best"]["metrics"]["fid_classifier"] (best-against-best settings); the width is
the unit's `preset` or the study config's, the grid the unit's `grid`, the config's, or
`default_grid`, and CTF's stage-2 depth the unit's `stage2_depth` or "1" (the study trains stage 2
at the same preset as stage 1). Methods with a learned stage 2 ("ctf", and "ctf-<clustering>" in a
clustering arm's unit) take the sweep's CTF speed; a parameter-free stage 2 ("ctf-uniform",
"ctf-frequency") has no speed figure in the sweep and is left out. Speed: each row of a sweep JSON gives `width`, `grid` and per
sampler `name` ("baseline", "ctf-<depth>") and `images_per_s`, at `info.vocab`.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ...artifacts import read_json
from ...errors import CtfgenError
from ..reporting import markdown_table, pyplot, save_figure

@dataclass
class QualitySpeedPoint:
    method: str  # the study's name: baseline, ctf (k-means), ctf-<clustering> (a clustering arm)
    vocab: int
    width: str
    grid: int
    sampler: str  # the sweep's sampler the speed comes from
    steps: int | None = None  # the unit's training steps where the study varies them (bench lasting)
    fid: list[float] = field(default_factory=list)  # one per seed
    images_per_s: float = 0.0

    @property
    def sizes(self) -> str:
        """"V 4096, tiny, 8x8" (and ", 3000 steps" where the study varies them): the plot's annotation."""
        return _sizes(self.vocab, self.width, self.grid, self.steps)

    @property
    def label(self) -> str:
        return f"{self.method}, {self.sizes}"


def _sizes(vocab: int, width: str, grid: int, steps: int | None) -> str:
    return f"V {vocab}, {width}, {grid}x{grid}" + (f", {steps} steps" if steps else "")


def _field(obj, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise CtfgenError(f"{where}: missing field {key!r}")
    return obj[key]


# images/s of two sweeps share one axis only if they timed the same work on the same device
SAME_IN_EVERY_SWEEP = ("device", "threads", "dtype", "batch_size", "guidance_scale")
LOAD_SPREAD = 1.0  # 1-min load averages further apart than one busy core: timed under other conditions


def speed_table_of(speed_files: list[str | Path]) -> dict[tuple[int, str, int, str], float]:
    """images/s per (V, width, grid, sampler name) from sweep JSONs (a later file wins a repeat).
    Raises CtfgenError naming the files and the field when two sweeps differ in a setting of
    SAME_IN_EVERY_SWEEP (their images/s would not be comparable)."""
    out, first = {}, None
    for path in speed_files:
        data = read_json(path, what="speed sweep JSON")
        info = _field(data, "info", str(path))
        vocab = _field(info, "vocab", f"{path}: info")
        first = first or (path, info)
        for key in SAME_IN_EVERY_SWEEP:
            if key in info and key in first[1] and info[key] != first[1][key]:
                raise CtfgenError(f"{path}: info.{key} is {info[key]!r}, {first[0]} has {first[1][key]!r}; "
                                  "images/s of sweeps with other settings are not comparable: time them alike")
        for i, row in enumerate(_field(data, "rows", str(path))):
            where = f"{path}: rows[{i}]"
            width, grid = _field(row, "width", where), _field(row, "grid", where)
            for j, s in enumerate(_field(row, "samplers", where)):
                out[(vocab, width, grid, _field(s, "name", f"{where}.samplers[{j}]"))] = float(
                    _field(s, "images_per_s", f"{where}.samplers[{j}]"))
    return out


def speed_load_warnings(speed_files: list[str | Path]) -> list[str]:
    """A line when the sweeps were timed under 1-min load averages more than LOAD_SPREAD apart (rows'
    `loadavg_1min` at start); absolute images/s from a loaded machine are lower, the ratios less so."""
    loads = {}
    for path in speed_files:
        rows = read_json(path, what="speed sweep JSON").get("rows", [])
        starts = [r["loadavg_1min"][0] for r in rows if isinstance(r, dict) and r.get("loadavg_1min")]
        if starts:
            loads[str(path)] = max(starts)
    if len(loads) > 1 and max(loads.values()) - min(loads.values()) > LOAD_SPREAD:
        return ["the sweeps ran under other loads (1-min load average " + ", ".join(
            f"{v:.1f} in {k}" for k, v in loads.items()) + "): their images/s are not on one scale; "
            "time them in one quiet run"]
    return []


def study_units(quality: str | Path) -> tuple[list[tuple[str, dict]], dict]:
    """(where, unit) pairs and the study's config: from a results JSON's `units` list, or from a
    `bench lasting` results folder (one unit per JSON file; its report/ folder is not a unit)."""
    quality = Path(quality)
    if quality.is_dir():
        files = sorted(quality.glob("*.json"))
        if not files:
            raise CtfgenError(f"{quality}: no unit JSON in this results folder (bench lasting writes one per "
                              "finished unit)")
        return [(str(f), read_json(f, what="study unit JSON")) for f in files], {}
    data = read_json(quality, what="study results JSON")
    config = data.get("config", {}) if isinstance(data, dict) else {}
    return [(f"{quality}: units[{i}]", u) for i, u in enumerate(_field(data, "units", str(quality)))], config


def quality_speed_points(quality_file: str | Path, speed_files: list[str | Path], *,
                         default_grid: int | None = None,
                         steps: int | None = None) -> tuple[list[QualitySpeedPoint], list[str]]:
    """The points that have both figures (FID of every seed, images/s), and a line per (method, V,
    width, grid, steps) left out and why. `quality_file`: a results JSON or a `bench lasting` results
    folder, whose units keep their training steps apart; `steps`: only units of that many training
    steps. Errors (CtfgenError) name the file and field that is missing."""
    units, config = study_units(quality_file)
    if steps is not None:
        units = [(where, u) for where, u in units if u.get("steps", config.get("steps")) == steps]
        if not units:
            raise CtfgenError(f"{quality_file}: no unit trained for {steps} steps")
    speed = speed_table_of(speed_files)
    points: dict[tuple, QualitySpeedPoint] = {}
    left_out: dict[tuple, str] = {}
    for where, unit in units:
        vocab = _field(unit, "V", where)
        width = unit.get("preset", config.get("preset"))
        grid = unit.get("grid", config.get("grid", default_grid))
        if width is None:
            raise CtfgenError(f"{where}: no 'preset' in the unit or in the study's config")
        if grid is None:
            raise CtfgenError(f"{where}: no 'grid' in the unit or in the study's config; give the token grid of "
                              "units that record none (default_grid, --grid)")
        learned = ("ctf", f"ctf-{unit.get('clustering', 'kmeans')}")  # k-means, or a clustering arm's unit
        for method, result in _field(unit, "samples", where).items():
            fid = result.get("best", {}).get("metrics", {}).get("fid_classifier")
            key = (method, vocab, width, grid, unit.get("steps"))
            if fid is None:
                left_out[key] = "no best-setting classifier-FID in the study"
                continue
            if method != "baseline" and method not in learned:
                left_out[key] = "no speed figure: the sweep times the baseline and CTF with a learned stage 2 only"
                continue
            sampler = "baseline" if method == "baseline" else f"ctf-{unit.get('stage2_depth', '1')}"
            if (vocab, width, grid, sampler) not in speed:
                left_out[key] = f"no speed figure for {sampler} at V {vocab}, {width}, {grid}x{grid} in the sweep JSON"
                continue
            point = points.setdefault(key, QualitySpeedPoint(method, vocab, width, grid, sampler, unit.get("steps")))
            point.fid.append(float(fid))
            point.images_per_s = speed[(vocab, width, grid, sampler)]
    lines = [f"{m}, {_sizes(v, w, g, n)}: {why}" for (m, v, w, g, n), why in left_out.items()]
    return list(points.values()), lines


def points_table(points: list[QualitySpeedPoint]) -> str:
    """A Markdown table of the points: method, sizes, FID mean ± std (seeds), images/s."""
    trained = any(p.steps for p in points)
    rows = [["method", "V", "width", "tokens", *(["steps"] if trained else []), "classifier-FID (best)", "seeds",
             "speed from", "images/s"]]
    for p in points:
        std = f" ± {statistics.stdev(p.fid):.2f}" if len(p.fid) > 1 else ""
        rows.append([p.method, str(p.vocab), p.width, f"{p.grid}x{p.grid}", *([str(p.steps)] if trained else []),
                     f"{statistics.fmean(p.fid):.2f}{std}", str(len(p.fid)), p.sampler, f"{p.images_per_s:.2f}"])
    return markdown_table(rows)


def plot_quality_vs_speed(points: list[QualitySpeedPoint], path: str | Path, *, title: str = "") -> Path:
    """classifier-FID (mean, std over seeds as error bars; lower is better) against images/s (right is
    faster; a log axis when the speeds span 10x or more), one marker per method, each point labelled
    with its sizes; a PNG at `path`."""
    if not points:
        raise CtfgenError("quality vs speed: no point has both a classifier-FID and an images/s figure; "
                          "nothing to plot (see the left-out list)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {}
    for p in points:
        marker = markers.setdefault(p.method, "osD^v<>"[len(markers) % 7])
        std = statistics.stdev(p.fid) if len(p.fid) > 1 else 0.0
        ax.errorbar(p.images_per_s, statistics.fmean(p.fid), yerr=std, fmt=marker, capsize=3,
                    color=f"C{list(markers).index(p.method)}",
                    label=p.method if p.method not in ax.get_legend_handles_labels()[1] else None)
        ax.annotate(p.sizes, (p.images_per_s, statistics.fmean(p.fid)),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    speeds = [p.images_per_s for p in points]
    if max(speeds) >= 10 * min(speeds):  # widths far apart; a narrow range reads better on a linear axis
        ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)  # room for the labels
    ax.set_xlabel("images/s (bench speed --sweep; higher is faster)")
    ax.set_ylabel("classifier-FID, best settings (lower is better)")
    ax.set_title(title or "quality against sampling speed")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))
