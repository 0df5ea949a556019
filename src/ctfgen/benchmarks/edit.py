"""`ctfgen bench edit`: how well CTF's and the baseline's edits work, on real test images.

The test images are encoded by the pipelines' (shared) tokenizer; each edit keeps part of the codes:
- complete: the top half of the token rows kept, the bottom half drawn (CTF, baseline);
- inpaint: a central square of half the grid side redrawn: CTF "detail" (stage 2 only), CTF
  "layout" (stage 1 in raster order, then stage 2), and the baseline (raster order); CTF "layout"
  with Gibbs sweeps on a subset;
- vary (CTF): n detail variations per image against n fresh CTF samples of the image's class.

Scores: classifier-FID against the real test split and classifier agreement with the image's true
class (evaluate/classifier.py), for every sampling seed; the exactness of the kept positions (codes
identical; pixels compared with the decoded source codes, by their distance to the redrawn area:
the decoder mixes neighbouring tokens, and its attention block the whole image); seconds per edit.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..errors import CtfgenError
from ..evaluate.classifier import classifier_outputs
from ..evaluate.metrics import frechet_distance, gaussian_stats
from .edit_config import EditBenchConfig


def pixel_exactness(edited_NHWC: np.ndarray, recon_NHWC: np.ndarray, kept_L: np.ndarray) -> dict[str, Any]:
    """How the decoded pixels outside the redrawn token area compare with the decoded source codes:
    the share identical, the mean and largest absolute difference (0..255), and the largest distance
    (pixels, Chebyshev) from the redrawn area at which a pixel changed."""
    from scipy.ndimage import distance_transform_cdt

    H, W = edited_NHWC.shape[1:3]
    g = int(round(len(kept_L) ** 0.5))
    redrawn_HW = (~kept_L.reshape(g, g)).repeat(H // g, 0).repeat(W // g, 1)
    outside_HW = ~redrawn_HW
    dist_HW = distance_transform_cdt(outside_HW, metric="chessboard")  # 0 inside, 1 next to it, ...
    diff_NHW = np.abs(edited_NHWC.astype(np.int16) - recon_NHWC.astype(np.int16)).max(-1)
    out_diff = diff_NHW[:, outside_HW]
    changed_HW = (diff_NHW > 0).any(0) & outside_HW
    bands = {f"{lo}-{hi}px": (dist_HW >= lo) & (dist_HW <= hi) for lo, hi in ((1, 4), (5, 8), (9, 16), (17, H + W))}
    by_band = {name: float(diff_NHW[:, m].mean()) for name, m in bands.items() if m.any()}
    return {"identical_outside": float((out_diff == 0).mean()), "mean_abs_diff_outside": float(out_diff.mean()),
            "mean_abs_diff_by_distance": by_band,
            "max_abs_diff_outside": int(out_diff.max(initial=0)),
            "farthest_changed_px": int(dist_HW[changed_HW].max(initial=0)),
            "identical_beyond_8px": float((diff_NHW[:, dist_HW > 8] == 0).mean()) if (dist_HW > 8).any() else None}


def psnr(a_NHWC: np.ndarray, b_NHWC: np.ndarray) -> np.ndarray:
    """(N,) dB of each image pair, pixels scaled to [0, 1]."""
    mse = ((a_NHWC.astype(np.float64) - b_NHWC.astype(np.float64)) / 255.0) ** 2
    return 10 * np.log10(1.0 / np.maximum(mse.reshape(len(mse), -1).mean(1), 1e-12))


class Scorer:
    """Classifier-FID against the reference features, and agreement with given labels."""

    def __init__(self, classifier, reference_images: np.ndarray, device):
        self.classifier, self.device = classifier, device
        feats, _ = classifier_outputs(classifier, reference_images, device=device)
        self.ref = gaussian_stats(feats)

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        feats, probs = classifier_outputs(self.classifier, images, device=self.device)
        return {"fid_classifier": frechet_distance(*gaussian_stats(feats), *self.ref),
                "agreement": float((probs.argmax(1) == labels).mean())}

    def predict(self, images: np.ndarray) -> np.ndarray:
        return classifier_outputs(self.classifier, images, device=self.device)[1].argmax(1)


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": [float(v) for v in values]}


def run_edit_bench(ctf, baseline, classifier, test_images: np.ndarray, test_labels: np.ndarray,
                   cfg: EditBenchConfig, *, device="cpu", progress: bool = False, log=print) -> dict[str, Any]:
    """Every edit of the module docstring on the first `cfg.images` test images (uint8 (N, H, W, C),
    labels (N,)); the classifier-FID reference is the whole of `test_images`. Returns a JSON-ready
    dict: "rows" (one per edit: metrics as mean/std over seeds, exactness, seconds per edit),
    "vary", "gibbs", "reconstruction" (the tokenizer's own: the floor of any edit) and "figures"
    (uint8 figures per edit, removed before writing JSON)."""
    from ..sample.edit_outputs import edit_figure
    from ..sample.edit_sources import EditSource, encode_images

    if ctf.fingerprints.get("tokenizer") != baseline.fingerprints.get("tokenizer"):
        raise CtfgenError("bench edit: the CTF and baseline pipelines must share one tokenizer (the same codes)")
    n = min(cfg.images, len(test_images))
    images, labels = test_images[:n], np.asarray(test_labels[:n], np.int64)
    L, grid = ctf.seq_len, ctf.models["ar"].config.grid
    t0 = time.perf_counter()
    codes = encode_images(ctf, images, batch_size=cfg.batch_size)
    recon = ctf.decode(torch.as_tensor(codes), batch_size=cfg.batch_size)
    log(f"encoded {n} test images in {time.perf_counter() - t0:.1f} s")
    score = Scorer(classifier, test_images, device)
    src = EditSource(codes=codes, labels=labels, images=recon, origin=f"test split, first {n} images")
    out: dict[str, Any] = {"images": n, "seeds": list(cfg.seeds), "tokens": L, "grid": grid,
                           "reconstruction": {**score(recon, labels), "psnr_db": float(psnr(recon, images).mean())},
                           "real": score(images, labels), "rows": [], "figures": {}}
    half, side = grid // 2, grid // 2
    region = ((grid - side) // 2, (grid - side) // 2, side, side)
    out["keep_tokens"], out["region"] = half * grid, list(region)
    plans = [("complete", "ctf", dict(keep_tokens=half * grid)), ("complete", "baseline", dict(keep_tokens=half * grid)),
             ("inpaint detail", "ctf", dict(region=region, mode="detail")),
             ("inpaint layout", "ctf", dict(region=region, mode="layout")),
             ("inpaint layout", "baseline", dict(region=region, mode="layout"))]
    pipes = {"ctf": ctf, "baseline": baseline}
    for name, who, kw in plans:
        method = getattr(pipes[who], name.split()[0])
        per_seed, first = [], None
        for seed in cfg.seeds:
            t = time.perf_counter()
            e = method(src, n=1, seed=seed, batch_size=cfg.batch_size, progress=progress, **cfg.settings, **kw)
            secs = time.perf_counter() - t
            kept_same = float((e.samples.codes[:, e.kept_L] == codes[:, e.kept_L]).mean()) if e.kept_L.any() else None
            per_seed.append({**score(e.samples.images, labels), "seconds_per_edit": secs / n,
                             "kept_codes_identical": kept_same,
                             **pixel_exactness(e.samples.images, recon, e.kept_L)})
            first = first or e
            log(f"{name} ({who}) seed {seed}: {per_seed[-1]}")
        row = {"edit": name, "pipeline": who, "kept_tokens": int(first.kept_L.sum()),
               **{k: mean_std([s[k] for s in per_seed]) for k in ("fid_classifier", "agreement", "seconds_per_edit")},
               "kept_codes_identical": min(s["kept_codes_identical"] for s in per_seed),
               "pixels": {k: [s[k] for s in per_seed] for k in ("identical_outside", "mean_abs_diff_outside",
                                                                 "max_abs_diff_outside", "farthest_changed_px",
                                                                 "identical_beyond_8px", "mean_abs_diff_by_distance")}}
        out["rows"].append(row)
        out["figures"].setdefault(name, {})[who] = _subset_edits(first, cfg.figure_images)
    out["gibbs"] = _gibbs(ctf, src, region, cfg, score, progress, log)
    out["vary"] = _vary(ctf, src, images, cfg, score, progress, log)
    out["figures"] = {name: edit_figure(ctf, parts.get("ctf"), parts.get("baseline"), scale=4)
                      for name, parts in out["figures"].items()}
    out["figures"]["vary"] = out["vary"].pop("figure")
    return out


def _subset_edits(e, k: int):
    """The edits of the first k sources (n = 1), for a figure."""
    from dataclasses import replace

    s = e.samples
    samples = replace(s, images=s.images[:k], codes=s.codes[:k], labels=s.labels[:k], seeds=s.seeds[:k],
                      coarse=None if s.coarse is None else s.coarse[:k])
    source = replace(e.source, codes=e.source.codes[:k], labels=e.source.labels[:k], images=e.source.images[:k],
                     coarse=None if e.source.coarse is None else e.source.coarse[:k])
    return replace(e, samples=samples, source=source, source_index=e.source_index[:k])


def _take(src, k: int):
    from dataclasses import replace

    return replace(src, codes=src.codes[:k], labels=src.labels[:k], images=src.images[:k],
                   coarse=None if src.coarse is None else src.coarse[:k])


def _gibbs(ctf, src, region, cfg: EditBenchConfig, score, progress, log) -> dict[str, Any]:
    """CTF layout inpainting with and without Gibbs sweeps on the first `gibbs_images` images: agreement,
    time, and stage 1's own log-likelihood of the coarse maps it made (nats per image, class-conditional,
    no guidance): sweeps that see the kept labels after the region should make maps stage 1 finds
    likelier. Too few images for a FID."""
    from ..sample import SamplingConfig
    from ..sample.gibbs import sequence_log_probs

    if not cfg.gibbs_images or not cfg.gibbs_sweeps:
        return {}
    sub = _take(src, cfg.gibbs_images)
    ar = ctf.models["ar"]
    plain = SamplingConfig.baseline(guidance_scale=1.0, temperature=1.0)
    res: dict[str, Any] = {"images": len(sub.codes), "sweeps": cfg.gibbs_sweeps}
    for label, sweeps in (("raster", 0), ("gibbs", cfg.gibbs_sweeps)):
        per_seed = []
        for seed in cfg.seeds:
            t = time.perf_counter()
            e = ctf.inpaint(sub, region=region, mode="layout", gibbs_sweeps=sweeps, n=1, seed=seed,
                            batch_size=cfg.batch_size, progress=progress, **cfg.settings)
            secs = (time.perf_counter() - t) / len(sub.codes)
            coarse = torch.as_tensor(e.samples.coarse).to(ar.tok_embeddings.weight.device)
            labels = torch.as_tensor(sub.labels).to(coarse.device)
            nll = -sequence_log_probs(ar, coarse, labels, plain).double().sum(1).mean().item()
            agree = float((score.predict(e.samples.images) == sub.labels).mean())
            per_seed.append({"agreement": agree, "stage1_nll_nats": nll, "seconds_per_edit": secs})
        res[label] = {k: mean_std([s[k] for s in per_seed]) for k in per_seed[0]}
        log(f"gibbs bench {label}: {res[label]}")
    return res


def _vary(ctf, src, real: np.ndarray, cfg: EditBenchConfig, score, progress, log) -> dict[str, Any]:
    """Detail variations against fresh samples of the same class: per-pixel std over each source's n
    images, classifier agreement with the source's class, PSNR to the source (the real test image)."""
    from ..sample.edit_outputs import edit_figure

    sub = _take(src, cfg.vary_images)
    k, n = len(sub.codes), cfg.vary_n
    real_k = real[:k]

    def stats(images_MHWC: np.ndarray) -> dict[str, float]:
        per = images_MHWC.reshape(k, n, *images_MHWC.shape[1:]).astype(np.float64)
        agree = float((score.predict(images_MHWC) == np.repeat(sub.labels, n)).mean())
        return {"pixel_std": float(per.std(1, ddof=1).mean()), "agreement": agree,
                "psnr_to_source_db": float(psnr(images_MHWC, np.repeat(real_k, n, axis=0)).mean())}

    res: dict[str, Any] = {"images": k, "n": n, "temperatures": {}, "fresh": {}}
    figure = None
    for temp in cfg.vary_temperatures:
        per_seed = []
        for seed in cfg.seeds:
            t = time.perf_counter()
            e = ctf.vary(sub, n=n, seed=seed, batch_size=cfg.batch_size, progress=progress,
                         **{**cfg.settings, "stage2_temperature": temp})
            per_seed.append({**stats(e.samples.images), "seconds_per_edit": (time.perf_counter() - t) / (k * n)})
            if figure is None and temp == ctf.sampling.stage2_temperature:
                figure = edit_figure(ctf, _variations_of(e, cfg.figure_images), None, scale=4)
        res["temperatures"][str(temp)] = {m: mean_std([s[m] for s in per_seed]) for m in per_seed[0]}
        log(f"vary T2={temp}: {res['temperatures'][str(temp)]}")
    per_seed = []
    for seed in cfg.seeds:  # fresh samples: the same classes, n each, no source
        fresh = ctf.generate(np.repeat(sub.labels, n).tolist(), seed=seed, batch_size=cfg.batch_size, **cfg.settings)
        per_seed.append(stats(fresh.images))
    res["fresh"] = {m: mean_std([s[m] for s in per_seed]) for m in per_seed[0]}
    log(f"fresh samples: {res['fresh']}")
    res["figure"] = figure if figure is not None else np.zeros((1, 1, 3), np.uint8)
    return res


def _variations_of(e, k: int):
    """The variations of the first k sources, for a figure."""
    from dataclasses import replace

    m = k * int(e.record["n"])
    s = e.samples
    samples = replace(s, images=s.images[:m], codes=s.codes[:m], labels=s.labels[:m], seeds=s.seeds[:m],
                      coarse=s.coarse[:m])
    return replace(e, samples=samples, source=_take(e.source, k), source_index=e.source_index[:m])


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/EDITING.md from a `run_edit_bench` result."""
    def pm(d, fmt="{:.2f}"):
        return f"{fmt.format(d['mean'])} ± {fmt.format(d['std'])}"

    lines = [f"{result['images']} test images, sampling seeds {result['seeds']} (mean ± std over seeds).", "",
             "| edit | pipeline | kept tokens | classifier-FID ↓ | agreement ↑ | kept codes identical | pixels identical "
             "outside the redrawn area | farthest changed pixel (px) | ms per edit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        px = r["pixels"]
        ident = "–" if r["kept_tokens"] == 0 else f"{min(px['identical_outside']):.3f}"
        lines.append(f"| {r['edit']} | {r['pipeline']} | {r['kept_tokens']} / {result['tokens']} | "
                     f"{pm(r['fid_classifier'])} | {pm(r['agreement'], '{:.3f}')} | "
                     f"{'–' if r['kept_codes_identical'] is None else r['kept_codes_identical']} | {ident} | "
                     f"{max(px['farthest_changed_px'])} | {1000 * r['seconds_per_edit']['mean']:.1f} |")
    rec, real = result["reconstruction"], result["real"]
    lines += ["", f"For scale: the tokenizer's reconstructions of the same images (nothing redrawn) score "
              f"classifier-FID {rec['fid_classifier']:.2f} and agreement {rec['agreement']:.3f} "
              f"(PSNR {rec['psnr_db']:.1f} dB to the real images); the real images themselves "
              f"{real['fid_classifier']:.2f} and {real['agreement']:.3f} (they are part of the reference)."]
    g = result.get("gibbs") or {}
    if g:
        lines += ["", f"Gibbs sweeps (CTF, inpaint layout, the first {g['images']} images, {g['sweeps']} sweep(s)):", "",
                  "| resampling of the region's coarse labels | agreement ↑ | stage-1 NLL of the coarse map "
                  "(nats/image) ↓ | ms per edit |", "|---|---|---|---|"]
        for label in ("raster", "gibbs"):
            r = g[label]
            lines.append(f"| {label} | {pm(r['agreement'], '{:.3f}')} | {pm(r['stage1_nll_nats'])} | "
                         f"{1000 * r['seconds_per_edit']['mean']:.0f} |")
    v = result["vary"]
    lines += ["", f"Detail variations (CTF, {v['images']} test images x {v['n']}) against {v['n']} fresh CTF "
              "samples of each image's class:", "",
              "| images | per-pixel std (0..255) | agreement with the source's class ↑ | PSNR to the source (dB) |",
              "|---|---|---|---|"]
    for temp, r in v["temperatures"].items():
        lines.append(f"| variations, stage-2 temperature {temp} | {pm(r['pixel_std'])} | "
                     f"{pm(r['agreement'], '{:.3f}')} | {pm(r['psnr_to_source_db'])} |")
    f = v["fresh"]
    lines.append(f"| fresh samples of the class | {pm(f['pixel_std'])} | {pm(f['agreement'], '{:.3f}')} | "
                 f"{pm(f['psnr_to_source_db'])} |")
    return "\n".join(lines) + "\n"
