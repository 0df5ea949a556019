"""The settings of `ctfgen bench train`, `aux-loss`, `quality-speed`, `speed` and `gpu`, each declared
once (`config.option`): the command line makes their flags from them (apps/cli/bench.py). Torch-free,
so that `--help` and a bad flag answer without loading a bench. Paths, --out, --json, --device and
--threads are how a run is carried out, not settings, and stay with the command. The first paragraph of
each class's docstring is its command's description."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..models.preset_table import PRESET_NAMES
from .speed_presets import PRESETS as SPEED_PRESETS


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
    steps: int | None = option(None, "keep only the units trained for this many steps (a `bench lasting` "
                                     "results folder holds several budgets; default: all)", min=1)


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


@dataclass
class SpeedBenchConfig:
    """Sample batches with CTF (stage 1 + stage 2) and the baseline, random weights, guidance on,
    interleaved after a warm-up; print the median images/s, peak memory and their ratio.

    `ctfgen bench speed`'s settings (benchmarks/speed.py: bench_speed); its --sweep's: SpeedSweepConfig."""

    # choices: a live view of the table, so that a size added to it is offered
    preset: str = option("fmnist", "fmnist: small GPT, V 4096, K 128, 8x8 tokens; B / L / XL: GPT-B / L / XL, "
                                   "V 16384, K 512, 16x16, stage 2 aux-B (B) or aux-L", choices=SPEED_PRESETS.keys())
    aux_preset: str | None = option(None, "stage-2 size (none: the preset's: fmnist small, B aux-B)",
                                    choices=PRESET_NAMES, metavar="PRESET")
    batch_size: int = option(64, "images per batch", min=1)
    runs: int = option(3, "timed batches per sampler", min=1)
    warmup: int = option(1, "untimed rounds first", min=0)
    guidance_scale: float = option(2.0, "guidance of both", min=1.0, note="1 = off", flags=("--cfg",))
    dtype: str = option("fp32", "model dtype (bf16: for GPUs)", choices=("fp32", "bf16"))
    compile: str | None = option(None, "compiled decoding (GPUs; sample/decoding.py): inductor (a bare --compile) "
                                       "or cudagraph", choices=("inductor", "cudagraph"))
    profile: bool = option(False, "then profile one more batch of each (torch.profiler) and print where the time goes")


@dataclass
class SpeedSweepConfig:
    """`ctfgen bench speed --sweep`: instead of one preset, every (token grid, width) cell at one codebook:
    the baseline and CTF with stage 2 at several depths, timed side by side in each cell (fp32, eager).

    Its flags are for --sweep only (benchmarks/speed_sweep.py: speed_sweep)."""

    widths: str = option("tiny,small,B", "stage-1 / baseline presets, comma-separated", items=str,
                         choices=PRESET_NAMES, metavar="P,P")
    stage2_depths: str = option("1/4,1/2,1", "stage-2 layers as fractions of stage 1's, same width; each must give "
                                             "whole layers at every width", items=str, metavar="F,F")
    grids: str = option("8", "tokens per side: 8 is this data's 8x8, 16 the paper's 16x16", items=int, min=1,
                        metavar="G,G")
    vocab: int = option(16384, "codebook size V", min=3, max=65536)
    k: int = option(512, "coarse vocabulary K", min=2, max=65535)
    num_classes: int = option(10, "class labels", min=1)
