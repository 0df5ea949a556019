"""The settings of `ctfgen bench train`, `aux-loss`, `quality-speed`, `speed` and `gpu`, each declared
once (`config.option`): the command line makes their flags from them (apps/cli/bench.py). Torch-free,
so that `--help` and a bad flag answer without loading a bench. Paths, --out, --json, --device and
--threads are how a run is carried out, not settings, and stay with the command. The first paragraph of
each class's docstring is its command's description."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..models.preset_table import PRESET_NAMES


@dataclass
class TrainBenchConfig:
    """Train stage 1 (ar, vocabulary K), stage 2 (aux) and the baseline (vocabulary V) at the same preset on
    random codes, alternating one step of each, and print tokens/s, memory and the ratios.

    `ctfgen bench train`'s settings (benchmarks/train_speed.py: bench_train); the first paragraph is the
    command's description."""

    preset: str = option("tiny", "model size for both models: a `ctfgen train --preset`", choices=PRESET_NAMES,
                         metavar="PRESET")
    vocab: int = option(4096, "codebook size V of the baseline", min=2)
    k: int = option(128, "coarse vocabulary K of stage 1", min=2)
    grid: int = option(8, "tokens per side: sequences of grid*grid", min=1)
    num_classes: int = option(1000, "class labels", min=1)
    batch_size: int = option(32, "samples per step", min=1)
    steps: int = option(20, "timed steps per model", min=1)
    warmup: int = option(3, "untimed steps per model first", min=0)


@dataclass
class AuxLossBenchConfig:
    """Time the three formulations of stage 2's cluster-masked loss (the same loss and gradients) on one
    model: the head alone and a whole training step, median of --steps after --warmup.

    `ctfgen bench aux-loss`'s settings (benchmarks/aux_loss.py: bench_aux_loss)."""

    preset: str = option("aux-L", "stage-2 size (aux-L is the paper's)", choices=PRESET_NAMES, metavar="PRESET")
    vocab: int = option(16384, "codebook size V", min=2, max=65536)
    k: int = option(512, "clusters K, balanced random", min=2, max=65536)
    grid: int = option(16, "tokens per side", min=1)
    batch_size: int = option(2, "samples per step", min=1)
    steps: int = option(3, "timed rounds", min=1)
    warmup: int = option(1, "untimed rounds first", min=0)
    clusters: str = option("balanced", "cluster sizes: equal, or uneven like k-means (largest ~3x the mean)",
                           choices=("balanced", "skewed"))
    head_only: bool = option(False, "time the loss alone, not whole training steps")


@dataclass
class QualitySpeedConfig:
    """Match the scaling study's best-setting classifier-FID per method, V, width and token grid with the
    images/s of the same sampler in `bench speed --sweep` JSONs; print the matched points (and what has no
    match), and draw FID against images/s. Nothing is estimated.

    `ctfgen bench quality-speed`'s settings (experiments/quality/speed_plot.py: quality_speed_points)."""

    grid: int | None = option(None, "tokens per side of study units that record none (the 8x8 study of "
                                    "docs/results: 8)", min=1)


@dataclass
class GpuCheckConfig:
    """Run the paper-scale check on one GPU (scripts/gpu_check.sh calls this): the tests marked cuda,
    training steps of stage 1 / stage 2 / the baseline at B and L (tokens/s, memory, MFU), sampling at
    B / L / XL in fp32 / bf16, eager and compiled, beside the paper's A100 images/s, a one-process torchrun
    DDP / FSDP run and resume, stage 2's loss formulations; OUT/gpu_check.json and OUT/gpu_check.md are
    rewritten after every section. No downloads.

    `ctfgen bench gpu`'s settings (benchmarks/gpucheck: GpuCheck)."""

    quick: bool = option(False, "every section at tiny sizes (seconds; the CPU test runs it)")
    budget: float = option(420.0, "skip the remaining optional sections once this much time is spent", min=0.0,
                           min_open=True, metavar="SECONDS")
    peak_tflops: float | None = option(None, "the GPU's dense bf16 peak for MFU, when it is not in the built-in table",
                                       min=0.0, min_open=True)
    skip: str = option("", "sections to leave out, comma-separated names as in the report (e.g. tests,smoke)",
                       items=str, allow_empty=True, metavar="A,B")
    lasting: bool = option(False, "then run `ctfgen bench lasting`'s default plan on the device (batch 256, bf16 "
                                  "autocast; OUT/lasting/, one JSON per unit in OUT/lasting/results/, whatever "
                                  "--budget says; needs Fashion-MNIST, $CTFGEN_FASHION_MNIST; not in --quick)")
