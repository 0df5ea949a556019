"""The check's targets (issue 13) judged from its result, and the Markdown report."""
from __future__ import annotations

from ...models.config import KINDS

SIZES = ("B", "L", "XL")
COMPILED = ("cudagraph", "inductor")
SAMPLING_X = 5.0  # compiled decoding: at least this many times the paper's A100 images/s
MFU_TARGET = 0.40


def _ok(sec: dict | None) -> dict | None:
    return sec["result"] if sec and sec.get("status") == "ok" else None


def _best_compiled(secs: dict, size: str) -> dict | None:
    rows = [_ok(secs.get(f"sampling/{size}/bf16/{mode}")) for mode in COMPILED]
    rows = [r for r in rows if r]
    return max(rows, key=lambda r: r["baseline"]["images_per_s"] + r["ctf"]["images_per_s"]) if rows else None


def evaluate_targets(result: dict) -> list[dict]:
    secs = result["sections"]
    on_gpu = result["env"].get("gpu") is not None and not result.get("quick")
    out: list[dict] = []

    def add(target: str, status: str, measured: str = "", profile=None):
        out.append({"target": target, "status": status, "measured": measured, "profile": profile})

    na = "n/a (no GPU, or --quick)"
    tests = secs.get("tests")
    if not on_gpu:
        add("every CUDA test passes", na)
    elif _ok(tests) is None:
        add("every CUDA test passes", "not measured", (tests or {}).get("error", ""))
    else:
        r = tests["result"]
        met = r.get("ok") and r.get("passed", 0) > 0 and not r.get("skipped")
        add("every CUDA test passes", "met" if met else "missed",
            f"{r.get('passed', 0)} passed, {r.get('failures', 0)} failed, {r.get('errors', 0)} errors, "
            f"{r.get('skipped', 0)} skipped")
    def judge(target: str, found: dict | None, verdict) -> None:
        """n/a off a GPU, "not measured" without a result, else verdict(found) = (status, measured, profile)."""
        if not on_gpu:
            add(target, na)
        elif found is None:
            add(target, "not measured")
        else:
            add(target, *verdict(found))

    def sampling_x(size: str):
        def verdict(best: dict):
            xs = {n: best[n]["x_paper"] for n in ("baseline", "ctf")}
            met = all(x is not None and x >= SAMPLING_X for x in xs.values())
            return ("met" if met else "missed",
                    f"{best['compile']}: baseline {best['baseline']['images_per_s']:.1f} images/s ({xs['baseline']:.2f}x), "
                    f"CTF {best['ctf']['images_per_s']:.1f} ({xs['ctf']:.2f}x)", ("sampling", size))
        return verdict

    def ctf_faster(size: str):
        def verdict(best: dict):
            ratio = best["ctf_over_baseline"]
            return "met" if ratio > 1 else "missed", f"{best['compile']}: {ratio:.2f}x", ("sampling", size)
        return verdict

    for size in SIZES:
        judge(f"compiled sampling >= {SAMPLING_X:g}x the paper's A100 images/s at {size} (both samplers)",
              _best_compiled(secs, size) if on_gpu else None, sampling_x(size))
    for size in ("L", "XL"):
        judge(f"CTF faster than the baseline at {size}, compiled (paper: {'1.16' if size == 'L' else '1.18'}x)",
              _best_compiled(secs, size) if on_gpu else None, ctf_faster(size))
    rows = {(r["kind"], r["preset"]): r for r in (_ok(secs.get("training")) or {}).get("rows", [])}
    for kind in ("ar", "baseline"):
        target = f"training MFU of {'stage 1' if KINDS[kind].needs_coarse_map else 'the baseline'} at L >= {MFU_TARGET:.0%}"
        r = rows.get((kind, "L"))
        if not on_gpu:
            add(target, na)
        elif r is None or r.get("mfu") is None:
            add(target, "not measured", "" if r is None else f"no bf16 peak known for {result['env'].get('gpu')}")
        else:
            add(target, "met" if r["mfu"] >= MFU_TARGET else "missed", f"{100 * r['mfu']:.1f}%",
                ("training", f"{kind}/L"))
    smoke = secs.get("smoke")
    target = "one-process torchrun: DDP, FSDP and a resume that ends where the uninterrupted run does"
    if _ok(smoke) is None:
        add(target, "not measured", (smoke or {}).get("error") or (smoke or {}).get("reason", ""))
    else:
        r = smoke["result"]
        add(target, "met" if r.get("ok") else "missed",
            f"max weight difference {r['max_weight_diff']:.1e}" if "max_weight_diff" in r else
            "a launch failed: " + ", ".join(k for k, v in r["runs"].items() if v["returncode"]))
    for t in out:
        if t["status"] != "missed":
            t["profile"] = None
    return out


def _env_lines(env: dict, result: dict) -> list[str]:
    dirty = " (uncommitted changes)" if env.get("dirty") else ""
    lines = [f"- commit `{env['commit']}`{dirty}, ctfgen {env['ctfgen']}",
             f"- device: {env.get('gpu') or 'CPU'} ({env['device']})"
             + (f", {env.get('gpu_memory_gib')} GiB, compute capability {env.get('compute_capability')}, "
                f"driver {env.get('driver')}" if env.get("gpu") else f", {env.get('torch_threads')} torch threads"),
             f"- torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Python {env['python']}",
             f"- bf16 peak for MFU: {result.get('peak_bf16_tflops') or 'unknown'} TFLOP/s"
             + (f" ({result['peak_source']})" if result.get("peak_source") else ""),
             f"- wall time {result.get('elapsed_s', 0):.0f} s (budget {result['budget_s']:.0f} s)"
             + ("" if result.get("finished") else ", NOT FINISHED")
             + (", quick mode (tiny sizes)" if result.get("quick") else "")]
    return lines


def to_markdown(result: dict) -> str:
    from .sampling import format_sampling
    from .training import format_training

    secs = result["sections"]
    lines = ["# ctfgen GPU check", ""] + _env_lines(result["env"], result) + ["", "## Targets", "",
                                                                            "| target | status | measured |",
                                                                            "|---|---|---|"]
    lines += [f"| {t['target']} | {t['status']} | {t['measured']} |" for t in result.get("targets", [])]
    tests = _ok(secs.get("tests"))
    if tests:
        lines += ["", "## CUDA tests (`pytest -m cuda`)", "",
                  f"{tests.get('passed', 0)} passed, {tests.get('failures', 0)} failed, {tests.get('errors', 0)} errors, "
                  f"{tests.get('skipped', 0)} skipped in {tests.get('seconds', 0):.0f} s"
                  + (": " + ", ".join(tests["failed"]) if tests.get("failed") else "")]
    training = _ok(secs.get("training"))
    if training:
        lines += ["", "## Training steps (bf16 autocast, AdamW)", ""] + format_training(training["rows"])
    sampling = [s["result"] for name, s in secs.items() if name.startswith("sampling/") and s.get("status") == "ok"]
    if sampling:
        order = {"B": 0, "L": 1, "XL": 2}
        variant = {("fp32", None): 0, ("fp32", "cudagraph"): 1, ("bf16", None): 2, ("bf16", "cudagraph"): 3,
                   ("bf16", "inductor"): 4}
        sampling.sort(key=lambda r: (order.get(r["preset"], -1), variant.get((r["dtype"], r["compile"]), 9)))
        lines += ["", f"## Sampling (batch {sampling[0]['batch_size']}, guidance 2.0, random weights; stage 2 "
                      f"{sampling[0]['aux']})", ""] + format_sampling(sampling)
    smoke = _ok(secs.get("smoke"))
    if smoke:
        runs = ", ".join(f"{k}: rc {v['returncode']} in {v['seconds']:.0f} s" for k, v in smoke["runs"].items())
        lines += ["", "## torchrun, one process: DDP, stop, resume under FSDP", "",
                  f"{'passed' if smoke.get('ok') else 'FAILED'}: {runs}"
                  + (f"; resumed to step {smoke['resumed_step']}, max weight difference to the uninterrupted run "
                     f"{smoke['max_weight_diff']:.2e} (tolerance {smoke['tolerance']:g})" if "resumed_step" in smoke else "")]
    aux = _ok(secs.get("aux_loss"))
    if aux:
        lines += ["", f"## Stage 2's loss formulations ({aux['clusters']} clusters)", "",
                  "| formulation | loss alone ms | training step ms | peak MiB |", "|---|---|---|---|"]
        lines += [f"| {r['impl']} | {r['head_ms']:.1f} | {r['step_ms']:.1f} | {r['peak_mb']:.0f} |" for r in aux["rows"]]
        lines.append(f"\nfastest training step: {aux['fastest_step']}")
    profiles = [(n, s["result"]) for n, s in secs.items() if n.startswith("profile/") and s.get("status") == "ok"]
    for name, res in profiles:
        lines += ["", f"## {name}", ""]
        parts = [("training step", res["profile"])] if "profile" in res else list(res.items())
        for who, prof in parts:
            share = prof.get("device_busy_share")
            lines.append(f"{who}: wall {prof['wall_s']:.3f} s, device busy "
                         + (f"{100 * share:.0f}%" if share is not None else "n/a"))
            lines += ["", "| op | calls | self s |", "|---|---|---|"]
            lines += [f"| `{o['name'][:60]}` | {o['calls']} | {o['self_s']:.4f} |" for o in prof["top_ops"]]
            lines.append("")
    other = [(n, s) for n, s in secs.items() if s.get("status") != "ok"]
    if other:
        lines += ["", "## Not run or failed", ""]
        lines += [f"- {n}: {s['status']}: {s.get('reason') or s.get('error')}" for n, s in other]
    return "\n".join(lines) + "\n"
