"""`ctfgen demo`: the whole pipeline on the embedded Fashion-MNIST default."""
from __future__ import annotations

from ._util import add_command, add_config_flags, add_device_args, config_from_args, setup_device

ORDER = 1

HELP = {
    "tokenizer_steps": "tokenizer training steps",
    "tokenizer_batch": "tokenizer batch size",
    "views": "views encoded per training image: none or flip",
    "code_images": "training images encoded into codes, the first N of the split (0: all)",
    "k": "number of coarse labels (clusters of the codebook)",
    "cluster_method": "kmeans, balanced, random or agglomerative",
    "preset": "size of stage 1, stage 2 and the baseline (tiny, small, ...)",
    "steps": "optimizer steps for each of stage 1, stage 2 and the baseline",
    "batch_size": "training batch size",
    "lr": "learning rate per 256 samples (scaled with the batch size)",
    "warmup": "learning-rate warm-up steps",
    "samples_per_class": "samples per class for each of CTF and the baseline",
    "classifier_epochs": "epochs of the domain classifier used for classifier-FID/IS and precision/recall",
    "inception": "also compute FID with the standard Inception network (when its weights are installed)",
    "reference_images": "test-split images used as the reference (0: all)",
    "seed": "seed of every step",
}


def register(sub) -> None:
    from ..demo import DemoConfig

    add_experiment(
        sub, "demo", DemoConfig, HELP, _run, out="runs/demo", out_help="demo folder",
        help="run the whole pipeline on Fashion-MNIST (CTF vs baseline) and write a report",
        description="Tokenizer, codes, coarse labels, stage 1, stage 2, baseline, sampling and evaluation on the "
                    "embedded Fashion-MNIST default, sized for a 2-core CPU. Writes OUT/report/README.md (and "
                    "index.html). Rerunning reuses every finished step.")


def _run(args) -> int:
    from ..demo import Demo, DemoConfig

    cfg, device = experiment_setup(DemoConfig, args)
    Demo(cfg, args.out, device=device, progress=not args.quiet).run()
    return 0


def add_experiment(group, name: str, cls, helps: dict[str, str], run, *, out: str, out_help: str, help: str,
                   description: str, **flag_options):
    """An experiment command (demo, bench quality, bench scaling) that `run(args)` carries out: --out
    (default `out`), --data-path, one flag per field of its settings dataclass `cls` (`flag_options`:
    add_config_flags' types, choices), --quiet and the device flags. Returns the parser, for the
    command's own flags."""
    p = add_command(group, name, run, help=help, description=description)
    p.add_argument("--out", default=out, help=f"{out_help} (default: {out})")
    p.add_argument("--data-path", default=None, help="Fashion-MNIST idx folder (default: /usr/share/datasets/fashion-mnist)")
    add_config_flags(p, cls, helps, **flag_options)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_args(p)
    return p


def experiment_setup(cls, args):
    """(settings of dataclass `cls` read from the flags, with the data at --data-path; the device)."""
    from ..data import DataConfig

    device = setup_device(args)
    return config_from_args(cls, args, data=DataConfig(path=args.data_path)), device
