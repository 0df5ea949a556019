"""scripts/gpu_check.sh end to end on the CPU in quick mode: every section runs (at tiny sizes), the
JSON and Markdown reports are written, and the GPU targets are reported as not applicable."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ctfgen.benchmarks.gpucheck.flops import gpu_peak_tflops, mfu, train_flops_per_token
from ctfgen.benchmarks.gpucheck.report import evaluate_targets
from ctfgen.models import make_config

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_quick_on_cpu(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--device", "cpu", "--quick",
                           "--threads", "1", "--lasting"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    secs = result["sections"]
    for name in ("tests", "training", "smoke", "sampling/tiny/bf16/eager", "sampling/tiny/fp32/eager", "aux_loss"):
        assert secs[name]["status"] == "ok", (name, secs[name].get("error"))
    assert secs["sampling/tiny/bf16/cudagraph"]["status"] == "skipped"
    assert secs["lasting"] == {"status": "skipped", "reason": "not in --quick (the CPU test)"}  # the long study: GPUs
    assert result["finished"] and result["env"]["commit"] and result["env"]["torch"]
    tests = secs["tests"]["result"]
    assert tests["ok"] and tests["skipped"] == tests["tests"] > 0  # every cuda test selected, none run here
    rows = secs["training"]["result"]["rows"]
    assert [r["kind"] for r in rows] == ["ar", "baseline", "aux"] and all(r["tokens_per_s"] > 0 for r in rows)
    smoke = secs["smoke"]["result"]
    assert smoke["ok"] and smoke["first_records_kept"] and smoke["max_weight_diff"] <= 1e-6
    assert {r["impl"] for r in secs["aux_loss"]["result"]["rows"]} == {"loop", "gather", "masked"}
    targets = {t["target"]: t["status"] for t in result["targets"]}
    assert targets.pop(next(t for t in targets if t.startswith("one-process torchrun"))) == "met"
    assert set(targets.values()) == {"n/a (no GPU, or --quick)"}
    md = (out / "gpu_check.md").read_text()
    assert "## Targets" in md and "## Training steps" in md and "## Sampling" in md and "DDP" in md


def test_gpu_script_needs_an_out_folder():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_peak_table_and_model_flops():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops("NVIDIA L40S") == 362.0 and gpu_peak_tflops("NVIDIA L4") == 121.0
    assert gpu_peak_tflops("NVIDIA A10G") is None and gpu_peak_tflops("Some Future GPU") is None
    cfg = make_config("baseline", "L", vocab_size=16384, num_classes=1000, grid=16)
    # 6 * (blocks + head) + attention: 6 * (302.0M + 16.8M) + 12 * 24 * 1024 * 257
    per_token = train_flops_per_token(cfg)
    assert per_token == pytest.approx(6 * (24 * (4 * 1024**2 + 3 * 1024 * 2816) + 16384 * 1024)
                                      + 12 * 24 * 1024 * 257)
    aux = make_config("aux", "aux-L", vocab_size=16384, coarse_vocab=512, num_classes=1000, grid=16)
    assert train_flops_per_token(aux) < per_token  # 32 head rows per position, not 16384
    assert mfu(1e5, per_token, 989.0) == pytest.approx(1e5 * per_token / 989e12)
    assert mfu(1e5, per_token, None) is None


def _sampling(size, base_ips, ctf_ips, compile="cudagraph"):
    from ctfgen.benchmarks.gpucheck.sampling import PAPER_A100

    rows = {n: {"images_per_s": v, "x_paper": v / PAPER_A100[n][size]} for n, v in (("baseline", base_ips),
                                                                                   ("ctf", ctf_ips))}
    return {"status": "ok", "result": {"preset": size, "compile": compile, "ctf_over_baseline": ctf_ips / base_ips,
                                       **rows}}


def test_targets_judged_from_gpu_figures():
    secs = {"tests": {"status": "ok", "result": {"ok": True, "passed": 20, "skipped": 0, "failures": 0,
                                                  "errors": 0}},
            "sampling/B/bf16/cudagraph": _sampling("B", 100.0, 90.0),
            "sampling/L/bf16/cudagraph": _sampling("L", 60.0, 50.0),
            "training": {"status": "ok", "result": {"rows": [{"kind": "ar", "preset": "L", "mfu": 0.45},
                                                             {"kind": "baseline", "preset": "L", "mfu": 0.3}]}}}
    result = {"env": {"gpu": "NVIDIA H200"}, "quick": False, "sections": secs}
    got = {t["target"].split(" (")[0]: (t["status"], t["profile"]) for t in evaluate_targets(result)}
    assert got["every CUDA test passes"] == ("met", None)
    assert got["compiled sampling >= 5x the paper's A100 images/s at B"] == ("met", None)
    assert got["compiled sampling >= 5x the paper's A100 images/s at L"] == ("met", None)
    assert got["compiled sampling >= 5x the paper's A100 images/s at XL"][0] == "not measured"
    assert got["CTF faster than the baseline at L, compiled"] == ("missed", ("sampling", "L"))
    assert got["training MFU of stage 1 at L >= 40%"] == ("met", None)
    assert got["training MFU of the baseline at L >= 40%"] == ("missed", ("training", "baseline/L"))


def test_profiles_of_missed_targets_render(tmp_path):
    """The profiles the check takes for a missed target (here on the CPU, tiny sizes) and their
    Markdown: where the time goes, op by op."""
    import torch

    from ctfgen.benchmarks.gpucheck.report import to_markdown
    from ctfgen.benchmarks.gpucheck.sampling import profile_sampling
    from ctfgen.benchmarks.gpucheck.training import time_training

    cpu = torch.device("cpu")
    sampled = profile_sampling("tiny", dtype="fp32", compile=None, batch_size=2, device=cpu, top=5)
    assert set(sampled) == {"baseline", "ctf"} and all(len(p["top_ops"]) == 5 for p in sampled.values())
    trained = time_training("baseline", "tiny", vocab=256, k=16, grid=4, num_classes=10, batch_size=2, steps=1,
                            warmup=1, device=cpu, peak_tflops=None, precision="fp32", profile=True)
    assert trained["profile"]["wall_s"] > 0 and trained["mfu"] is None
    result = {"env": {"commit": "x", "ctfgen": "0", "device": "cpu", "torch": torch.__version__, "python": "3",
                      "gpu": None}, "budget_s": 1, "quick": True,
              "sections": {"profile/sampling/tiny": {"status": "ok", "result": sampled},
                           "profile/training/baseline/tiny": {"status": "ok", "result": trained}}}
    md = to_markdown(result)
    assert "## profile/sampling/tiny" in md and "training step: wall" in md
    assert sampled["ctf"]["top_ops"][0]["name"] in md
