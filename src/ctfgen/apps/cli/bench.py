"""`ctfgen bench ...`: measurements of the implementation itself (training throughput, ...).

A group: each measurement is one sub-command, registered by its own `_add_*` function below. The
benchmarks and experiments live in their own modules (benchmarks/train_speed.py,
benchmarks/aux_loss.py, benchmarks/speed.py, experiments/quality/, experiments/scaling/,
benchmarks/gpucheck/); the benches' settings are declared once in benchmarks/settings.py (their flags
are made from it); this module adds the flags that are not settings, runs them and prints their tables
(_bench_tables.py).
"""
from __future__ import annotations

import inspect
import sys

from ._bench_edit import add_edit
from .demo import add_experiment, experiment_setup
from ...benchmarks.settings import (AuxLossBenchConfig, GpuCheckConfig, QualitySpeedConfig, SpeedBenchConfig,
                                     SpeedSweepConfig, TrainBenchConfig)
from ...config import check_fields, item_list, to_dict
from ._util import (
    add_command,
    add_config_flags,
    add_device_args,
    add_group,
    config_from_args,
    given_flags,
    device,
    nonneg_int,
    typed_list,
    positive_float,
    setup_device,
)

ORDER = 95


def register(sub) -> None:
    group = add_group(sub, "bench", help="benchmarks: training throughput, sampling speed, CTF vs baseline quality")
    _add_train(group)
    _add_aux_loss(group)
    _add_gpu(group)
    _add_speed(group)
    _add_quality_speed(group)
    _add_quality(group)
    _add_scaling(group)
    _add_lasting(group)
    add_edit(group)


# ---------------------------------------------------------------- bench train


def _add_train(group) -> None:
    _add_device_and_json(_add_bench(
        group, "train", _run_train, TrainBenchConfig,
        help="training tokens/s and memory of stage 1 and stage 2 vs the baseline (full vocab)"))


def _add_bench(group, name: str, run, settings: type, only: tuple[str, ...] | None = None, **parser_options):
    """A bench command with a flag per field of its `settings` (benchmarks/settings.py; a bool field is a
    switch) and the first paragraph of their docstring as its description; returns its parser for the
    flags that are not settings (paths, --device, --json)."""
    p = add_command(group, name, run, description=_first_paragraph(settings), **parser_options)
    add_config_flags(p, settings, only=only, switches=True)
    return p


def _first_paragraph(settings: type) -> str:
    return inspect.cleandoc(settings.__doc__).split("\n\n")[0]


def _add_device_and_json(p) -> None:
    p.add_argument("--device", default="auto", type=device, help="cpu, cuda, cuda:N or auto (bf16 autocast on CUDA)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def _run_train(args) -> int:
    from ...dist import device_name
    from ...benchmarks.train_speed import bench_train, rows_to_json
    from ._bench_tables import train_table

    cfg = check_fields(config_from_args(TrainBenchConfig, args))
    device = setup_device(args)
    rows = bench_train(**to_dict(cfg), device=device)
    name = device_name(device)
    print(train_table(rows, device=name, preset=args.preset, batch_size=args.batch_size, grid=args.grid))
    _write_rows(args, name, ("preset", "vocab", "k", "grid", "num_classes", "batch_size", "steps"), rows_to_json(rows))
    return 0


def _write_rows(args, device: str, keys: tuple[str, ...], rows: list[dict]) -> None:
    """--json: the device, the arguments named by `keys` and the rows."""
    if args.json:
        from ...artifacts import atomic_write_json

        atomic_write_json(args.json, {"device": device, "args": {k: getattr(args, k) for k in keys}, "rows": rows})


# ---------------------------------------------------------------- bench speed (the bench: benchmarks/speed.py)

def _add_speed(group) -> None:
    p = _add_bench(
        group, "speed", _run_speed, SpeedBenchConfig, only=_SPEED_FLAGS,
        help="sampling images/s and memory of CTF vs the baseline at the same stage-1 size")
    # unset: `--preset` names a single preset (refused with --sweep), else fmnist; its choices are checked
    # by the flag's type (the usage says PRESET, not the table)
    add_config_flags(p, SpeedBenchConfig, only=("preset",), unset=True, choices={"preset": None})
    add_config_flags(p, SpeedBenchConfig, only=("compile",), bare={"compile": "inductor"}, shown={"compile": "off"})
    add_device_args(p)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    sweep = p.add_argument_group("sweep", "--sweep: " + _first_paragraph(SpeedSweepConfig).partition(": ")[2])
    sweep.add_argument("--sweep", action="store_true", help="run the sweep (flags below; --json gets every cell)")
    add_config_flags(sweep, SpeedSweepConfig, unset=True)  # unset: a sweep flag without --sweep is refused


_SPEED_FLAGS = ("aux_preset", "batch_size", "runs", "warmup", "guidance_scale", "dtype", "profile")


def _run_speed(args) -> int:
    import torch

    from ...artifacts import atomic_write_json
    from ...errors import CtfgenError
    from ...benchmarks.speed import bench_speed, results_to_json
    from ._bench_tables import speed_table

    sweep = given_flags(SpeedSweepConfig, args)
    if args.sweep:
        single = [flag for flag, on in (("--preset", args.preset), ("--aux-preset", args.aux_preset),
                                        ("--dtype bf16", args.dtype != "fp32"), ("--compile", args.compile)) if on]
        if single:
            raise CtfgenError(f"bench speed --sweep: {', '.join(single)}: for a single preset, not the sweep "
                              "(its sizes: --widths, --stage2-depths, --grids, --vocab, --k; it runs fp32 eager)")
        return _run_speed_sweep(args, check_fields(SpeedSweepConfig(**sweep)))
    if sweep:
        raise CtfgenError(f"bench speed: {', '.join('--' + k.replace('_', '-') for k in sweep)}: for --sweep only")
    cfg = check_fields(config_from_args(SpeedBenchConfig, args, preset=args.preset or "fmnist"))
    device = setup_device(args)
    results, info = bench_speed(cfg.preset, batch_size=cfg.batch_size, runs=cfg.runs, warmup=cfg.warmup,
                                guidance_scale=cfg.guidance_scale, aux_preset=cfg.aux_preset, device=device,
                                dtype=torch.bfloat16 if cfg.dtype == "bf16" else None, compile=cfg.compile,
                                profile=cfg.profile)
    print(speed_table(results, info))
    if args.json:
        atomic_write_json(args.json, results_to_json(results, info))
    return 0


def _run_speed_sweep(args, cfg) -> int:
    from ...artifacts import atomic_write_json
    from ...benchmarks.speed_sweep import speed_sweep, stage2_layers, sweep_to_json
    from ._bench_tables import sweep_cell_table, sweep_table

    widths, depths = item_list(cfg, "widths"), item_list(cfg, "stage2_depths")
    stage2_layers(widths, depths)  # a depth that gives no whole layer count is refused before any timing
    done = []

    def on_cell(cell, info):  # a long sweep shows and keeps every finished cell
        done.append(cell)
        print(sweep_cell_table(cell, info), flush=True)
        if args.json:
            atomic_write_json(args.json, sweep_to_json(done, info))

    cells, info = speed_sweep(widths=widths, depths=depths, grids=item_list(cfg, "grids"), vocab=cfg.vocab, k=cfg.k,
                              num_classes=cfg.num_classes,
                              batch_size=args.batch_size, runs=args.runs, warmup=args.warmup,
                              guidance_scale=args.guidance_scale, device=setup_device(args), profile=args.profile,
                              on_cell=on_cell)
    print(sweep_table(cells, info))
    return 0


# ---------------------------------------------------------------- bench quality-speed
# (experiments/quality/speed_plot.py)

def _add_quality_speed(group) -> None:
    p = _add_bench(
        group, "quality-speed", _run_quality_speed, QualitySpeedConfig,
        help="plot measured classifier-FID against measured images/s")
    p.add_argument("--quality", required=True, metavar="PATH",
                   help="the study's results JSON (results.json), or a `bench lasting` results folder")
    p.add_argument("--speed", required=True, nargs="+", metavar="PATH", help="`bench speed --sweep --json` files")
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the plot")


def _run_quality_speed(args) -> int:
    from ...experiments.quality.speed_plot import (plot_quality_vs_speed, points_table, quality_speed_points,
                                                   speed_load_warnings)

    cfg = check_fields(config_from_args(QualitySpeedConfig, args))
    points, left_out = quality_speed_points(args.quality, args.speed, default_grid=cfg.grid, steps=cfg.steps)
    print(points_table(points))
    for line in left_out:
        print(f"left out: {line}")
    for line in speed_load_warnings(args.speed):
        print(f"warning: {line}", file=sys.stderr)
    print(f"plot: {plot_quality_vs_speed(points, args.out)}")
    return 0


# ---------------------------------------------------------------- bench aux-loss


def _add_aux_loss(group) -> None:
    _add_device_and_json(_add_bench(
        group, "aux-loss", _run_aux_loss, AuxLossBenchConfig,
        help="stage 2's loss formulations (loop, gather, masked) timed against each other"))


def _run_aux_loss(args) -> int:
    from ...dist import device_name
    from ...benchmarks.aux_loss import aux_rows_to_json, bench_aux_loss
    from ._bench_tables import aux_loss_table

    cfg = check_fields(config_from_args(AuxLossBenchConfig, args))
    device = setup_device(args)
    settings = to_dict(cfg)
    whole_step = not settings.pop("head_only")
    rows = bench_aux_loss(**settings, whole_step=whole_step, device=device)
    name = device_name(device)
    print(aux_loss_table(rows, device=name, preset=args.preset, vocab=args.vocab, k=args.k,
                         batch_size=args.batch_size, grid=args.grid, clusters=args.clusters))
    _write_rows(args, name, ("preset", "vocab", "k", "grid", "batch_size", "steps", "warmup", "clusters", "head_only"),
                aux_rows_to_json(rows))
    return 0


# ---------------------------------------------------------------- bench gpu


def _add_gpu(group) -> None:
    p = _add_bench(
        group, "gpu", _run_gpu, GpuCheckConfig,
        help="the prepared GPU check: CUDA tests, training MFU, sampling speed vs the paper, torchrun",
        epilog="docs/GPU.md explains each figure and the targets.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for gpu_check.json, gpu_check.md, logs")
    add_device_args(p)


def _run_gpu(args) -> int:
    from ...benchmarks.gpucheck import GpuCheck

    cfg = check_fields(config_from_args(GpuCheckConfig, args))
    device = setup_device(args)
    extra = {}
    if cfg.lasting:
        from ...experiments.scaling.lasting.study import gpu_section

        extra["lasting"] = gpu_section
    check = GpuCheck(args.out, device=device, quick=cfg.quick, budget_s=cfg.budget, peak_tflops=cfg.peak_tflops,
                     skip=tuple(item_list(cfg, "skip")), extra=extra)
    result = check.run()
    print((check.out / "gpu_check.md").read_text())
    failed = [n for n, s in result["sections"].items() if s.get("status") == "error"]
    if failed:
        print(f"sections that raised: {', '.join(failed)} (tracebacks in {check.out / 'gpu_check.json'})")
    return 1 if failed else 0


# ---------------------------------------------------------------- bench quality

def _add_quality(group) -> None:
    from ...experiments.quality import ABLATIONS, QualityConfig

    p = add_experiment(
        group, "quality", QualityConfig, _run_quality, out="runs/quality", out_help="bench folder",
        help="CTF vs the baseline at equal training steps, at several checkpoints, and ablations",
        description="""Train CTF (stage 1 + stage 2) and the baseline with the same stage-1 architecture on the
            same codes, evaluate both on class-balanced samples at several checkpoints (FID, IS, precision, recall),
            and write OUT/report/README.md with a table and metric-vs-step plots. --ablate adds one table per
            ablation. Rerunning reuses every finished step.""")
    p.add_argument("--ablate", nargs="+", default=[], metavar="NAME", choices=[*ABLATIONS, "all"],
                   help=f"ablations to run after the comparison: {', '.join(ABLATIONS)}, or all (default: none)")


def _run_quality(args) -> int:
    from ...experiments.quality import QualityBench, QualityConfig, resolve_ablations

    ablations = resolve_ablations(args.ablate)
    cfg, device = experiment_setup(QualityConfig, args)
    QualityBench(cfg, args.out, device=device, progress=not args.quiet).run(ablations)
    return 0


# ---------------------------------------------------------------- bench scaling

# --only-seeds: the seeds a process runs (e.g. 1,2 in a second process)
_seed_list = typed_list(nonneg_int, list)


def _add_scaling(group) -> None:
    from ...experiments.scaling import ScalingConfig

    p = add_experiment(
        group, "scaling", ScalingConfig, _run_scaling, out="runs/scaling", out_help="study folder",
        switches=True, help="CTF vs the baseline as the codebook grows: held-out NLL, best-vs-best FID, seeds",
        description="For each codebook size V: a tokenizer, K = V/32 coarse labels, CTF and the baseline trained "
                    "with several seeds; held-out bits per token along training, a sampling sweep picking each "
                    "method's best classifier-FID settings, and arms (clusterings, parameter-free stage 2). "
                    "Writes OUT/report/README.md (tables with mean ± std, plots) and OUT/results.json. Rerunning "
                    "continues an interrupted study at the model, checkpoint or evaluation where it stopped.")
    p.add_argument("--parts", default="all", choices=("all", "main", "arms", "report"),
                   help="run all, or only the main comparison (k-means CTF, baseline, parameter-free stage 2s) or "
                        "only the clustering arms; parts may run at once in separate processes on one --out, "
                        "then a run of all gathers them; report: make nothing, report what is measured (default: all)")
    p.add_argument("--only-seeds", type=_seed_list, default=None, metavar="S,S",
                   help="run only these training seeds (e.g. 1,2 in a second process); later seeds take seed 0's "
                        "sampling settings once its sweep is saved (default: every seed)")
    p.add_argument("--noise-reference", default=None, metavar="RESULTS_JSON",
                   help="results.json of a study of the same recipe with the other kind of seeds (e.g. "
                        "docs/results/scaling-results.json, training seeds): the report compares the spread of the "
                        "paired gap across the two and states what the tokenizer and clustering add")


def _run_scaling(args) -> int:
    from ...experiments.scaling import ScalingConfig, ScalingStudy

    cfg, device = experiment_setup(ScalingConfig, args)
    ScalingStudy(cfg, args.out, device=device, progress=not args.quiet).run(
        parts=args.parts, only_seeds=args.only_seeds, noise_reference=args.noise_reference)
    return 0


# ---------------------------------------------------------------- bench lasting

def _add_lasting(group) -> None:
    from ...experiments.scaling.lasting import LastingConfig

    p = add_experiment(
        group, "lasting", LastingConfig, _run_lasting, out="runs/lasting", out_help="study folder",
        help="does CTF's advantage last? long WSD runs, early stopping, model size and sequence length, pipeline seeds",
        description="For each unit (V x grid x preset x pipeline seed): a tokenizer, codes (train, a validation split "
                    "held out of the training images, test) and k-means coarse labels made with the seed; CTF "
                    "(learned and uniform stage 2) and the baseline trained with a warm-up, stable, decay schedule; "
                    "validation bits per token every --eval-every steps, each method's best checkpoint kept; there "
                    "the test-split NLL and best-against-best classifier-FID; FLOPs per step, where the baseline "
                    "matches CTF, a fitted asymptote. Each finished unit is written to --results-dir at once and "
                    "skipped by any later run that finds it there; every model, checkpoint and evaluation is reused "
                    "on rerun. RESULTS_DIR/report/README.md: tables (mean ± std, paired 95% intervals), plots, "
                    "and what did not run.")
    p.add_argument("--results-dir", default="docs/results/lasting", metavar="DIR",
                   help="one JSON per finished unit, and report/ (default: docs/results/lasting)")
    p.add_argument("--only-seeds", type=_seed_list, default=None, metavar="S,S",
                   help="run only these pipeline seeds (e.g. 1 in a second process on the same --out); later seeds "
                        "take seed 0's sampling settings once its sweep is saved (default: every seed)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true",
                      help="make nothing: list the plan's units, which have results, and a rough CPU cost of the rest")
    mode.add_argument("--report", action="store_true", help="make nothing: rewrite the report from --results-dir")
    p.add_argument("--plan-gflops", type=positive_float, default=None, metavar="GFLOPS",
                   help="--plan's effective model FLOP rate of one process (default: 12, measured on the project's "
                        "loaded 2-core CPU)")


def _run_lasting(args) -> int:
    from ...experiments.scaling.lasting import LastingConfig, LastingStudy

    cfg, device = experiment_setup(LastingConfig, args)
    study = LastingStudy(cfg, args.out, results_dir=args.results_dir, device=device, progress=not args.quiet)
    if args.plan:
        from ...experiments.scaling.lasting.plan import plan_rows, plan_table

        print(plan_table(plan_rows(study, **({"gflops": args.plan_gflops} if args.plan_gflops else {}))))
        return 0
    if args.report:
        from ...experiments.scaling.lasting.report import write_report

        print(write_report(args.results_dir, cfg, study.units()))
        return 0
    print(study.run(only_seeds=args.only_seeds))
    return 0
