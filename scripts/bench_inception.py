"""Seconds per image of the FID Inception network under the torch and onnxruntime backends.

Both run in this one process, alternating (torch, ort, ort, torch, ...), on the same real-sized
inputs (Fashion-MNIST test images when installed, else fixed random images; both are resized to
299x299 before the network), so machine load hits both alike; the ratio is the result to read,
not the absolute times. Wall and process CPU seconds are both recorded: with one thread the CPU
time is the less load-sensitive of the two (a loaded machine stretches wall time, not CPU time).

    python3 scripts/bench_inception.py --n 40 --reps 5 --threads 1
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def images(n: int) -> tuple[np.ndarray, str]:
    if FMNIST.is_file():
        with gzip.open(FMNIST) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
        return x[:n].copy(), f"Fashion-MNIST test[:{n}] (28x28 grey)"
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), f"{n} random 28x28 grey"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="images per timed run (one batch)")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per backend")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--inception", default=None, help="TorchScript file (default: the packaged one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ctfgen.evaluate.inception import InceptionFeatures

    t0 = time.perf_counter()
    nets = {"torch": InceptionFeatures(args.inception, backend="torch"),
            "onnxruntime": InceptionFeatures(args.inception, backend="onnxruntime")}
    setup_s = time.perf_counter() - t0
    x, what = images(args.n)
    for net in nets.values():  # warm-up: first-call allocations, kernel selection
        net.features(x[:2])
    times: dict[str, list[float]] = {k: [] for k in nets}
    cpu: dict[str, list[float]] = {k: [] for k in nets}
    feats = {}
    for rep in range(args.reps):
        order = list(nets) if rep % 2 == 0 else list(nets)[::-1]
        for name in order:
            t, c = time.perf_counter(), time.process_time()
            feats[name] = nets[name].features(x, batch_size=args.n)
            times[name].append((time.perf_counter() - t) / args.n)
            cpu[name].append((time.process_time() - c) / args.n)
    diff = float(np.abs(feats["torch"] - feats["onnxruntime"]).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {
        "inputs": what,
        "threads": args.threads,
        "reps": args.reps,
        "wall_s_per_image": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "cpu_s_per_image": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
        "median_wall_s_per_image": {k: round(v, 4) for k, v in med.items()},
        "median_cpu_s_per_image": {k: round(v, 4) for k, v in med_cpu.items()},
        "wall_ratio_torch_over_onnxruntime": round(med["torch"] / med["onnxruntime"], 3),
        "cpu_ratio_torch_over_onnxruntime": round(med_cpu["torch"] / med_cpu["onnxruntime"], 3),
        "per_rep_wall_ratio": [round(a / b, 3) for a, b in zip(times["torch"], times["onnxruntime"])],
        "per_rep_cpu_ratio": [round(a / b, 3) for a, b in zip(cpu["torch"], cpu["onnxruntime"])],
        "max_abs_feature_diff": diff,
        "setup_s_both_backends": round(setup_s, 1),
        "onnxruntime": nets["onnxruntime"].describe(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
