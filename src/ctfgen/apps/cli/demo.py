"""`ctfgen demo`: the whole pipeline on the embedded Fashion-MNIST default."""
from __future__ import annotations

from ._util import add_command, add_config_flags, add_device_args, config_from_args, setup_device

ORDER = 1

def register(sub) -> None:
    from ...experiments.demo import DemoConfig

    add_experiment(
        sub, "demo", DemoConfig, _run, out="runs/demo", out_help="demo folder",
        help="run the whole pipeline on Fashion-MNIST (CTF vs baseline) and write a report",
        description="Tokenizer, codes, coarse labels, stage 1, stage 2, baseline, sampling and evaluation on the "
                    "embedded Fashion-MNIST default, sized for a 2-core CPU. Writes OUT/report/README.md (and "
                    "index.html). Rerunning reuses every finished step.")


def _run(args) -> int:
    from ...experiments.demo import Demo, DemoConfig

    cfg, device = experiment_setup(DemoConfig, args)
    Demo(cfg, args.out, device=device, progress=not args.quiet).run()
    return 0


def add_experiment(group, name: str, cls, run, *, out: str, out_help: str, help: str, description: str,
                   **flag_options):
    """An experiment command (demo, bench quality, bench scaling, bench lasting) that `run(args)` carries
    out: --out (default `out`), --data-path, one flag per field of its settings dataclass `cls` (help,
    bounds, choices from the fields' `option`s; `flag_options`: add_config_flags' switches), --quiet
    and the device flags. Returns the parser, for the command's own flags."""
    p = add_command(group, name, run, help=help, description=description)
    p.add_argument("--out", default=out, help=f"{out_help} (default: {out})")
    from ...data import FASHION_MNIST_DIR

    p.add_argument("--data-path", default=None, help=f"Fashion-MNIST idx folder (default: {FASHION_MNIST_DIR})")
    add_config_flags(p, cls, **flag_options)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_args(p)
    return p


def experiment_setup(cls, args):
    """(settings of dataclass `cls` read from the flags, with the data at --data-path; the device)."""
    from ...data import DataConfig

    device = setup_device(args)
    return config_from_args(cls, args, data=DataConfig(path=args.data_path)), device
