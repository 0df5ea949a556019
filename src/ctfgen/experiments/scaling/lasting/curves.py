"""What a held-out curve says: training FLOPs per step, the best point (early stopping), where the
baseline first matches CTF (at equal steps, and at equal FLOPs), the two at equal compute, and a
fitted end point.

The fit is L(s) = L_inf + A * s^-alpha (scipy.optimize.curve_fit) over the constant-rate part of the
curve (warm-up and the final decay left out: the decay drops the loss by an amount the power law does
not describe). Its interval here is the fit's own (covariance); the report also gives the spread of
L_inf across pipeline seeds, the interval it states.
"""
from __future__ import annotations

import math
import warnings


def train_flops_per_step(model_cfgs: list, batch: int) -> float:
    """Model FLOPs (forward + backward) of one optimizer step of the models `model_cfgs` (ModelConfigs)
    trained side by side on `batch` sequences: CTF is stage 1 + stage 2, the baseline its one model
    (with its V-row head; stage 2's counts one cluster's members), benchmarks/gpucheck/flops.py's convention."""
    from ....benchmarks.gpucheck.flops import train_flops_per_token

    return float(sum(train_flops_per_token(c) * c.seq_len * batch for c in model_cfgs))


def best_point(curve: list[dict]) -> dict:
    """The point of lowest held-out bits per token (the first, on a tie): early stopping's pick."""
    return min(curve, key=lambda p: p["bits_per_token"])


def first_match(ctf: list[dict], base: list[dict], x: str = "step") -> float | None:
    """The first `x` (step or flops) at which the baseline's curve is at or below CTF's, CTF's curve
    interpolated linearly in x between its points (log x for FLOPs); None when it never is in the run."""
    xs = [p[x] for p in ctf]
    ys = [p["bits_per_token"] for p in ctf]
    for p in base:
        if not xs[0] <= p[x] <= xs[-1]:
            continue
        if p["bits_per_token"] <= _interp(p[x], xs, ys, log=x == "flops"):
            return p[x]
    return None


def at_equal_compute(a: list[dict], b: list[dict]) -> dict:
    """Both curves at the training FLOPs where the cheaper run ends (the other interpolated in log
    FLOPs): {"flops", "a", "b", "gap" (a − b)} in validation bits per token."""
    flops = min(a[-1]["flops"], b[-1]["flops"])
    ya, yb = (_interp(flops, [p["flops"] for p in c], [p["bits_per_token"] for p in c], log=True) for c in (a, b))
    return {"flops": flops, "a": ya, "b": yb, "gap": ya - yb}


def _interp(x: float, xs: list[float], ys: list[float], log: bool) -> float:
    f = math.log if log else (lambda v: v)
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (f(x) - f(x0)) / (f(x1) - f(x0))
    return ys[-1]


def fit_asymptote(steps: list[float], bits: list[float]) -> dict:
    """L_inf, A, alpha of L(s) = L_inf + A s^-alpha by least squares, with the standard errors from the
    fit's covariance; {"ok": False, "why": ...} when there are fewer than 4 points or it does not
    converge. alpha is bounded to (0, 4] and A to >= 0 (a curve that falls)."""
    import numpy as np
    from scipy.optimize import curve_fit

    if len(steps) < 4:
        return {"ok": False, "why": f"{len(steps)} points; the fit needs at least 4", "points": len(steps)}
    s, y = np.asarray(steps, float), np.asarray(bits, float)
    scale = s[0]  # s / s[0] keeps A of the order of the loss drop

    def law(x, l_inf, a, alpha):
        return l_inf + a * (x / scale) ** -alpha

    p0 = (y.min() - 0.1 * (y.max() - y.min()), max(y[0] - y.min(), 1e-3), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, cov = curve_fit(law, s, y, p0=p0, bounds=([-np.inf, 0.0, 1e-3], [np.inf, np.inf, 4.0]), maxfev=20000)
    except (RuntimeError, ValueError) as e:
        return {"ok": False, "why": f"no convergence: {e}", "points": len(steps)}
    err = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else [float("nan")] * 3
    resid = y - law(s, *p)
    return {"ok": True, "L_inf": float(p[0]), "L_inf_se": float(err[0]), "A": float(p[1]), "alpha": float(p[2]),
            "alpha_se": float(err[2]), "rms_residual": float(np.sqrt(np.mean(resid ** 2))), "points": len(steps),
            "steps": [int(steps[0]), int(steps[-1])], "form": "L_inf + A (s / s0)^-alpha"}


def fit_window(curve: list[dict], warmup: int, decay_start: int) -> list[dict]:
    """The points of the constant-rate stretch: after warm-up, before the final decay."""
    return [p for p in curve if warmup < p["step"] <= decay_start]
