"""`ctfgen bench gpu`: the prepared check of the paper-scale path on one GPU (scripts/gpu_check.sh).

Sections, in order of importance, each recorded (result, or error, or why it was skipped) in
OUT/gpu_check.json and OUT/gpu_check.md, rewritten after every section so that a run cut short
still leaves its figures: environment; `pytest -m cuda`; training steps; compiled sampling;
torchrun DDP / FSDP / resume; eager sampling (bf16, fp32); stage 2's loss formulations; inductor
decoding; a device profile for each target missed; then the sections the caller hands in (`extra`,
e.g. the long study of `ctfgen bench gpu --lasting`, which the command line wires in: this package
does not import the experiments). Once the time budget is spent the remaining optional sections are
skipped, so the whole check ends in about `budget_s` plus the section running then. `quick` runs
every section at tiny sizes (the test suite runs it on a CPU), and leaves the extra sections out.
"""
from __future__ import annotations

import gc
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...artifacts import atomic_write_json
from .env import REPO, environment
from .flops import gpu_peak_tflops


@dataclass
class Plan:
    train_models: list[tuple[str, str]]  # (kind, preset)
    vocab: int
    k: int
    grid: int
    num_classes: int
    train_batch: int
    train_steps: int
    train_warmup: int
    aux_preset: str  # stage 2 for the loss-formulation timing
    aux_batch: int
    aux_steps: int
    sample_sizes: list[str]  # presets of benchmarks/speed.py
    sample_aux: str | None  # stage-2 preset of every size (None: the preset's own)
    sample_batch: int
    sample_runs: int
    sample_warmup: int
    inductor_sizes: list[str]
    smoke_steps: int = 4
    test_paths: list[str] = field(default_factory=list)  # empty: the checkout's tests/


def full_plan() -> Plan:
    return Plan(train_models=[("ar", "B"), ("baseline", "B"), ("ar", "L"), ("baseline", "L"), ("aux", "aux-L")],
                vocab=16384, k=512, grid=16, num_classes=1000, train_batch=64, train_steps=10, train_warmup=3,
                aux_preset="aux-L", aux_batch=64, aux_steps=3, sample_sizes=["B", "L", "XL"], sample_aux="aux-L",
                sample_batch=64, sample_runs=2, sample_warmup=1, inductor_sizes=["B"])


def quick_plan() -> Plan:
    return Plan(train_models=[("ar", "tiny"), ("baseline", "tiny"), ("aux", "tiny")],
                vocab=256, k=16, grid=4, num_classes=10, train_batch=4, train_steps=2, train_warmup=1,
                aux_preset="tiny", aux_batch=2, aux_steps=1, sample_sizes=["tiny"], sample_aux=None,
                sample_batch=4, sample_runs=1, sample_warmup=1, inductor_sizes=[],
                test_paths=[str(REPO / "tests" / "test_devices.py")])  # the device tests only: seconds


class GpuCheck:
    def __init__(self, out: str | Path, *, device: torch.device, quick: bool = False, budget_s: float = 420.0,
                 peak_tflops: float | None = None, skip: tuple[str, ...] = (), plan: Plan | None = None,
                 log=print, extra: dict | None = None):
        self.out = Path(out)
        self.device = device
        self.quick = quick
        self.plan = plan or (quick_plan() if quick else full_plan())
        self.budget_s = budget_s
        self.skip = set(skip)
        self.log = log
        # name -> fn(folder, device) -> dict: asked for by name, so run whatever the budget says
        self.extra = dict(extra or {})
        self.t0 = time.perf_counter()
        env = environment(device)
        table_peak = gpu_peak_tflops(env["gpu"]) if env.get("gpu") else None
        self.peak = peak_tflops or table_peak
        self.result: dict = {"format": 1, "quick": quick, "budget_s": budget_s, "env": env,
                             "peak_bf16_tflops": self.peak,
                             "peak_source": "--peak-tflops" if peak_tflops else ("datasheet table" if table_peak else None),
                             "plan": asdict(self.plan), "sections": {}}

    # ---- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def _section(self, name: str, fn, *, optional: bool = True, estimate_s: float = 0.0):
        """Run one section; record its result or error; rewrite the report. An optional section is
        skipped when it would end past the budget (`estimate_s`: its expected length on an H100)."""
        rec = self.result["sections"].setdefault(name, {})
        if name in self.skip or name.split("/")[0] in self.skip:
            rec.update(status="skipped", reason="--skip")
        elif optional and self.elapsed() + (0.0 if self.quick else estimate_s) > self.budget_s:
            rec.update(status="skipped", reason=f"time budget of {self.budget_s:.0f} s would be exceeded")
        else:
            self.log(f"[{self.elapsed():6.1f} s] {name} ...")
            t0 = time.perf_counter()
            try:
                rec.update(status="ok", result=fn())
            except Exception as e:  # a failing section must not take the others' figures with it
                rec.update(status="error", error=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc()[-3000:])
            rec["seconds"] = time.perf_counter() - t0
            self._free()
        self.write()
        return rec

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def write(self) -> None:
        from .report import evaluate_targets, to_markdown

        self.result["elapsed_s"] = self.elapsed()
        self.result["targets"] = evaluate_targets(self.result)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "gpu_check.json", self.result)
        tmp = self.out / "gpu_check.md.tmp"
        tmp.write_text(to_markdown(self.result))
        tmp.replace(self.out / "gpu_check.md")

    # ---- the check

    def run(self) -> dict:
        from .sampling import time_sampling
        from .smoke import run_smoke
        from .tests import run_cuda_tests

        p, dev = self.plan, self.device
        self.write()
        self._section("tests", lambda: run_cuda_tests(self.out, paths=p.test_paths or None), optional=False)
        self._section("training", self._training, optional=False)
        cuda = dev.type == "cuda"
        # rough lengths on an H100 (seconds), so that an optional section starts only if it fits
        eager_s = {"B": 25, "L": 35, "XL": 50}

        def sampling(size, dtype, compile, estimate):
            name = f"sampling/{size}/{dtype}/{compile or 'eager'}"
            if compile == "cudagraph" and not cuda:
                self.result["sections"][name] = {"status": "skipped", "reason": "CUDA graphs need a GPU"}
                return
            self._section(name, lambda: time_sampling(
                size, dtype=dtype, compile=compile, batch_size=p.sample_batch, runs=p.sample_runs,
                warmup=p.sample_warmup, device=dev, aux_preset=p.sample_aux), estimate_s=estimate)

        for size in p.sample_sizes:
            sampling(size, "bf16", "cudagraph", 15)
        self._section("smoke", lambda: run_smoke(self.out / "smoke", dev, steps=p.smoke_steps), optional=False)
        for dtype in ("bf16", "fp32"):
            for size in p.sample_sizes:
                sampling(size, dtype, None, eager_s.get(size, 10))
        for size in p.sample_sizes:
            sampling(size, "fp32", "cudagraph", 15)
        self._section("aux_loss", self._aux_loss, estimate_s=30)
        for size in p.inductor_sizes:
            sampling(size, "bf16", "inductor", 120)
        self._profiles()
        for name, fn in self.extra.items():
            if self.quick:
                self.result["sections"][name] = {"status": "skipped", "reason": "not in --quick (the CPU test)"}
                self.write()
            else:
                self._section(name, lambda fn=fn, name=name: fn(self.out / name, dev), optional=False)
        self.result["finished"] = True
        self.write()
        return self.result

    def _training(self) -> dict:
        from .training import time_training

        p = self.plan
        rows = []
        for kind, preset in p.train_models:
            if rows and self._over_budget():
                break
            self.log(f"  train {kind} {preset}")
            rows.append(time_training(kind, preset, vocab=p.vocab, k=p.k, grid=p.grid, num_classes=p.num_classes,
                                      batch_size=p.train_batch, steps=p.train_steps, warmup=p.train_warmup,
                                      device=self.device, peak_tflops=self.peak))
            self._free()
        return {"rows": rows}

    def _aux_loss(self) -> dict:
        from ..aux_loss import aux_rows_to_json, bench_aux_loss

        p = self.plan
        rows = bench_aux_loss(preset=p.aux_preset, vocab=p.vocab, k=p.k, grid=p.grid, batch_size=p.aux_batch,
                              steps=p.aux_steps, warmup=1, num_classes=p.num_classes, device=self.device,
                              clusters="skewed")
        data = aux_rows_to_json(rows)
        return {"rows": data, "clusters": "skewed", "fastest_step": min(data, key=lambda r: r["step_ms"])["impl"]}

    def _profiles(self) -> None:
        """Where the time goes, for each device target missed (a GPU only: CPU figures have no target)."""
        from .sampling import profile_sampling
        from .training import time_training

        if self.device.type != "cuda":
            return
        p = self.plan
        for t in list(self.result["targets"]):
            if t["status"] != "missed" or not t.get("profile"):
                continue
            kind, what = t["profile"]
            if f"profile/{kind}/{what}" in self.result["sections"]:
                continue  # two targets missed at one size share its profile
            if kind == "sampling":
                self._section(f"profile/sampling/{what}", lambda what=what: profile_sampling(
                    what, dtype="bf16", compile="cudagraph", batch_size=p.sample_batch, device=self.device,
                    aux_preset=p.sample_aux), estimate_s=30)
            elif kind == "training":
                model, preset = what.split("/")
                self._section(f"profile/training/{what}", lambda model=model, preset=preset: time_training(
                    model, preset, vocab=p.vocab, k=p.k, grid=p.grid, num_classes=p.num_classes,
                    batch_size=p.train_batch, steps=1, warmup=1, device=self.device, peak_tflops=self.peak,
                    profile=True), estimate_s=20)
