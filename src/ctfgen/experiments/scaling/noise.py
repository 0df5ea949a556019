"""What the tokenizer and the clustering add to the noise: the spread of the paired gap (CTF minus
baseline, same seed) across whole-pipeline seeds against its spread across training seeds, from the
results of two scaling studies of one recipe (`ctfgen bench scaling --pipeline-seeds
--noise-reference OTHER/results.json`).
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CtfgenError
from ..reporting import markdown_table
from .report import collect, common, fmt, mean_std


def read_results(path) -> dict:
    """A study's results.json (e.g. docs/results/scaling-results.json), checked enough to be compared."""
    import json

    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CtfgenError(f"{path}: not a readable results JSON ({e})") from None
    if not isinstance(results, dict) or not {"config", "units"} <= set(results):
        raise CtfgenError(f"{path}: expected a study's results.json with 'config' and 'units'")
    return results


def gaps(results: dict, measure: str = "nll_last") -> dict[int, list[float]]:
    """{V: the paired CTF − baseline differences of one measure, one per seed} of the k-means units."""
    rows, out = collect(results), {}
    for (V, clustering, name), r in rows.items():
        if clustering == "kmeans" and name == "ctf":
            a, b = common(r, rows.get((V, "kmeans", "baseline")), measure)
            if a:
                out[V] = [x - y for x, y in zip(a, b)]
    return out


def noise_components(ours: list[float], other: list[float], ours_kind: str) -> dict:
    """The paired gap's spread under pipeline seeds against training seeds: both stds, the variance
    ratio with a two-sided F-test p-value, and the variance the tokenizer and clustering add
    (var(pipeline) − var(training), floored at 0; a moment estimate, as noisy as its few seeds)."""
    from scipy.stats import f as f_dist

    pipe, train = (ours, other) if ours_kind == "pipeline" else (other, ours)
    out = {"pipeline": {"n": len(pipe), "mean": None, "std": None}, "training": {"n": len(train), "mean": None, "std": None}}
    for name, xs in (("pipeline", pipe), ("training", train)):
        if xs:
            out[name]["mean"], out[name]["std"] = mean_std(xs)
    if len(pipe) < 2 or len(train) < 2:
        return out
    vp, vt = out["pipeline"]["std"] ** 2, out["training"]["std"] ** 2
    if vt > 0:
        ratio = vp / vt
        cdf = float(f_dist.cdf(ratio, len(pipe) - 1, len(train) - 1))
        out["variance_ratio"], out["f_test_p"] = ratio, min(1.0, 2 * min(cdf, 1 - cdf))
    added = max(0.0, vp - vt)
    out["tokenizer_clustering_variance"] = added
    out["tokenizer_clustering_share"] = added / vp if vp > 0 else 0.0
    return out


def noise_table(results: dict, reference: dict) -> tuple[list[str], dict]:
    """Markdown lines comparing the paired gap's spread across this study's seeds with `reference`'s."""
    kind = results.get("seed_kind", "training")
    other_kind = reference.get("seed_kind", "training")
    if kind == other_kind:
        raise CtfgenError(f"noise reference: both studies use {kind} seeds; give one with the other kind")
    L = ["## What the tokenizer and the clustering add to the noise", "",
         f"The paired gap (CTF − baseline, same seed) across this study's {kind} seeds against a study with "
         f"{other_kind} seeds (the same recipe otherwise: {_recipe_diff(results, reference)}). The tokenizer + "
         "clustering variance is var(pipeline) − var(training), floored at 0; its share is of var(pipeline). "
         "F-test: two-sided, equal variances.", ""]
    t = [["measure", "V", "pipeline seeds: gap", "n", "training seeds: gap", "n", "variance ratio", "F-test p",
          "tokenizer + clustering share"]]
    summary: dict = {}
    for measure, label, digits in (("nll_last", "bits/token", 4), ("best:fid_classifier", "classifier-FID (best)", 3)):
        ours, theirs = gaps(results, measure), gaps(reference, measure)
        for V in sorted(set(ours) & set(theirs)):
            comp = noise_components(ours[V], theirs[V], kind)
            pipe = ours[V] if kind == "pipeline" else theirs[V]
            train = theirs[V] if kind == "pipeline" else ours[V]
            summary.setdefault(measure, {})[str(V)] = comp
            t.append([label, str(V), fmt(pipe, digits), str(len(pipe)), fmt(train, digits), str(len(train)),
                      f"{comp['variance_ratio']:.2f}" if "variance_ratio" in comp else "–",
                      f"{comp['f_test_p']:.3f}" if "f_test_p" in comp else "–",
                      f"{comp['tokenizer_clustering_share']:.0%}" if "tokenizer_clustering_share" in comp else "–"])
    if len(t) == 1:
        return L + ["No V with results in both studies yet.", ""], summary
    return L + [markdown_table(t), ""], summary


def _recipe_diff(a: dict, b: dict) -> str:
    skip = {"seeds", "pipeline_seeds", "vocabs", "arms", "arm_seeds", "inception", "classifier"}
    def differ(x, y) -> bool:  # a field one release added (absent from the other's dict) does not count
        if isinstance(x, dict) and isinstance(y, dict):
            return any(x[k] != y[k] for k in set(x) & set(y))
        return x != y

    diff = [k for k in sorted(set(a["config"]) | set(b["config"])) if k not in skip
            and differ(a["config"].get(k), b["config"].get(k))]
    return "same settings" if not diff else "they differ in " + ", ".join(diff)
